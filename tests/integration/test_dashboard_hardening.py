"""The dashboard against an attacker: a copy of the database opens no session, malformed CSRF
tokens and cookies are refused (never a 500), unknown filter parameters are refused by name,
every answer carries the browser's protective headers, and cancelling asks first."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import sessions
from tests.dashboard import COOKIE, LOGIN_COOKIE, Browser, dead_lettered
from tests.helpers import transfer_row
from tests.integration.test_dashboard import dash, keys, sent_ids  # noqa: F401 (fixtures)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- A copy of the database opens no session ------------------------------------------


def _copy(db: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    """Every row of `table`, as someone with a copy of the database reads it."""
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(psycopg.sql.SQL("SELECT * FROM {}").format(psycopg.sql.Identifier(table)))
        return cur.fetchall()


def _stolen_values(rows: list[dict[str, Any]]) -> tuple[list[bytes], list[str]]:
    """The bytes and text values of `rows`, and the text forms a thief would try of each."""
    raw = [bytes(v) for row in rows for v in row.values() if isinstance(v, bytes | memoryview)]
    text = [v for row in rows for v in row.values() if isinstance(v, str) and v]
    text += [_b64(v) for v in raw] + [v.hex() for v in raw]
    return raw, text


def test_a_copy_of_the_sessions_and_the_signing_secret_opens_no_session(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
) -> None:
    """What a thief holding a copy of `dashboard_sessions`, `service_secrets` and `api_keys`
    (taken while an operator is logged in) can try: stored values as the cookie, cookies
    signed with the stored secret over every stored value, stored or derived values as the
    CSRF token next to the victim's own cookie. None loads a page or cancels a transfer."""
    victim = Browser(dash, keys["operator"])
    transfer = dead_lettered(db, error=f"theft {uuid.uuid4().hex}")
    assert victim.get("/dashboard").status_code == 200

    rows = _copy(db, "dashboard_sessions") + _copy(db, "api_keys")
    secrets_rows = _copy(db, "service_secrets")
    assert secrets_rows, "the signing secret is kept in the database (the hard case)"
    signing = [bytes(r["value"]) for r in secrets_rows]
    raw, text = _stolen_values(rows)
    assert raw and text

    # Nothing stored is the session id or the CSRF token the victim's browser holds.
    session_id = sessions.unsign(signing[0], victim.cookie)
    assert session_id is not None
    for value in raw:
        assert session_id not in value
    for value in text:
        assert victim.csrf not in value and _b64(session_id) not in value

    cookies = [*text]
    for secret in signing:
        cookies += [sessions.sign(secret, v) for v in raw if len(v) == 32]
        cookies += [sessions.sign(secret, hashlib.sha256(v).digest()) for v in raw]
    assert len(cookies) > 10
    for cookie in cookies:
        page = dash.simulate_get("/dashboard", cookies={COOKIE: cookie})
        assert page.status_code == 303, cookie
        api = dash.simulate_get("/dashboard/api/overview", cookies={COOKIE: cookie})
        assert api.status_code == 401, cookie

    tokens = [*text]
    for secret in signing:
        tokens += [sessions.csrf_token(secret, v) for v in raw]
        tokens += [_b64(hmac.new(secret, v, hashlib.sha256).digest()) for v in raw]
    for token in tokens:
        form = victim.post(f"/dashboard/transfers/{transfer}/cancel", csrf=token)
        assert form.status_code == 403, token
        api = dash.simulate_post(
            f"/dashboard/api/transfers/{transfer}/cancel",
            cookies=victim.cookies,
            headers={"X-CSRF-Token": token},
        )
        assert api.status_code == 403, token
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []

    # The victim's own session still works: the thief changed nothing.
    assert victim.post(f"/dashboard/transfers/{transfer}/cancel").status_code == 303
    assert transfer_row(db, transfer)["failure_code"] == "cancelled_by_operator"


# --- Malformed CSRF tokens and cookies are refused, never a 500 -----------------------

#: Values a client may send where a token or cookie belongs: non-ASCII (of a token's length
#: too), empty, huge, and bytes a browser would never send.
MALFORMED = {
    "non-ascii": "é" * 43,
    "non-ascii-short": "tökén",
    "cyrillic": "токен" * 9,
    "empty": "",
    "huge": "A" * 6000,
    "nul": "\x00" * 43,
    "controls": "a\tb\x7f\x85" * 11,
}


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage() for r in errors]


def _sessions(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM dashboard_sessions").fetchone()
    assert row is not None
    return int(row[0])


def _login_form(dash: TestClient) -> str:  # noqa: F811
    return dash.simulate_get("/dashboard/login").cookies[LOGIN_COOKIE].value


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_login_csrf_field_is_403_and_opens_no_session(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    token = _login_form(dash)
    before = _sessions(db)
    resp = dash.simulate_post(
        "/dashboard/login",
        body=f"key={keys['operator']}&csrf={quote(value)}",
        headers=FORM,
        cookies={LOGIN_COOKIE: token},
    )
    assert resp.status_code == 403, resp.text[:300]
    assert "stale or was not sent by the dashboard" in resp.text
    assert COOKIE not in resp.cookies or resp.cookies[COOKIE].value == ""
    assert _sessions(db) == before
    _no_errors_logged(caplog)


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_login_cookie_is_403_and_opens_no_session(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    before = _sessions(db)
    resp = dash.simulate_post(
        "/dashboard/login",
        body=f"key={keys['operator']}&csrf={quote(value)}",  # the form echoes the cookie
        headers={**FORM, "Cookie": f"{LOGIN_COOKIE}={value}"},
    )
    assert resp.status_code == 403, resp.text[:300]
    assert _sessions(db) == before
    # The login form itself, asked for with that cookie, answers with a fresh token.
    form = dash.simulate_get("/dashboard/login", headers={"Cookie": f"{LOGIN_COOKIE}={value}"})
    assert form.status_code == 200
    fresh = form.cookies[LOGIN_COOKIE].value
    assert fresh != value and fresh.isascii() and len(fresh) == 43
    _no_errors_logged(caplog)


def test_repeated_login_tokens_are_403_and_open_no_session(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    token, other = _login_form(dash), _login_form(dash)
    before = _sessions(db)
    attempts = [
        # the field twice (the right token last, then first)
        (f"csrf={other}&csrf={token}", f"{LOGIN_COOKIE}={token}"),
        (f"csrf={token}&csrf={other}", f"{LOGIN_COOKIE}={token}"),
        (f"csrf={token}&csrf={token}", f"{LOGIN_COOKIE}={token}"),
        # the cookie twice
        (f"csrf={token}", f"{LOGIN_COOKIE}={other}; {LOGIN_COOKIE}={token}"),
        (f"csrf={token}", f"{LOGIN_COOKIE}={token}; {LOGIN_COOKIE}={other}"),
    ]
    for form, cookie in attempts:
        resp = dash.simulate_post(
            "/dashboard/login",
            body=f"key={keys['operator']}&{form}",
            headers={**FORM, "Cookie": cookie},
        )
        assert resp.status_code == 403, (form, cookie, resp.text[:300])
    assert _sessions(db) == before
    _no_errors_logged(caplog)


ACTIONS = [
    "/dashboard/transfers/{id}/retry",
    "/dashboard/transfers/{id}/cancel",
    "/dashboard/transfers/retry",
    "/dashboard/logout",
]


@pytest.mark.parametrize("template", ACTIONS)
def test_a_malformed_or_repeated_csrf_field_on_an_action_is_403_and_changes_nothing(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    template: str,
) -> None:
    transfer = dead_lettered(db, error=f"csrf {uuid.uuid4().hex}")
    error = transfer_row(db, transfer)["last_error"]
    browser = Browser(dash, keys["operator"])
    path = template.replace("{id}", str(transfer))
    bodies = [f"error={quote(error)}&csrf={quote(v)}" for v in MALFORMED.values()]
    bodies += [
        f"error={quote(error)}&csrf={browser.csrf}&csrf={browser.csrf}",
        f"error={quote(error)}&csrf=forged&csrf={browser.csrf}",
    ]
    for body in bodies:
        resp = dash.simulate_post(path, body=body, headers=FORM, cookies=browser.cookies)
        assert resp.status_code == 403, (body[:80], resp.text[:300])
        assert "csrf_token_invalid" in resp.text
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []
    assert browser.get("/dashboard").status_code == 200  # not even logged out
    _no_errors_logged(caplog)


def test_a_malformed_csrf_header_on_the_json_twin_is_403_and_changes_nothing(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    transfer = dead_lettered(db, error=f"csrf header {uuid.uuid4().hex}")
    browser = Browser(dash, keys["operator"])
    sent = [*MALFORMED.values(), f"{browser.csrf},{browser.csrf}", f"{browser.csrf}, x"]
    for value in sent:
        resp = dash.simulate_post(
            f"/dashboard/api/transfers/{transfer}/cancel",
            cookies=browser.cookies,
            headers={"X-CSRF-Token": value},
        )
        assert resp.status_code == 403, (value[:40], resp.text[:300])
        assert resp.json["error"]["code"] == "csrf_token_invalid"
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []
    _no_errors_logged(caplog)


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_session_cookie_is_no_session_and_no_error(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    browser = Browser(dash, keys["operator"])
    for cookie in (f"{COOKIE}={value}", f"{COOKIE}={value}.{value}", f"{COOKIE}={value}" * 3):
        page = dash.simulate_get("/dashboard", headers={"Cookie": cookie})
        assert page.status_code == 303 and page.headers["location"].endswith("/dashboard/login")
        api = dash.simulate_get("/dashboard/api/overview", headers={"Cookie": cookie})
        assert api.status_code == 401
    # Repeated with the real cookie, before or after: the real one still counts.
    for cookie in (
        f"{COOKIE}={value}; {COOKIE}={browser.cookie}",
        f"{COOKIE}={browser.cookie}; {COOKIE}={value}",
    ):
        assert dash.simulate_get("/dashboard", headers={"Cookie": cookie}).status_code == 200
    _no_errors_logged(caplog)


# --- Unknown filter parameters are refused by name ------------------------------------

#: Query strings a typo or a stale link makes, and the parameter each answer must name.
TYPOS = [("acount=1", "acount"), ("state=dead&curency=EUR", "curency"), ("limt=5", "limt")]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/api/transfers/count",
        "/dashboard/api/transfers",
        "/dashboard/api/actions",
        "/dashboard/api/webhooks",
    ],
)
@pytest.mark.parametrize(("query", "named"), TYPOS)
def test_an_unknown_parameter_on_the_json_twin_is_400_naming_it(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    path: str,
    query: str,
    named: str,
) -> None:
    resp = dash.simulate_get(
        path, query_string=query, headers={"Authorization": f"Bearer {keys['operator']}"}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json["error"]["code"] == "invalid_request"
    assert named in resp.json["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/transfers",
        "/dashboard/transfers/retry",
        "/dashboard/actions",
        "/dashboard/webhooks",
    ],
)
@pytest.mark.parametrize(("query", "named"), TYPOS)
def test_an_unknown_parameter_on_a_page_is_a_400_page_naming_it(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    path: str,
    query: str,
    named: str,
) -> None:
    resp = Browser(dash, keys["operator"]).get(path, query_string=query)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.headers["content-type"].startswith("text/html")
    assert "invalid_request" in resp.text and named in resp.text


def test_a_filter_parameter_given_twice_is_400_naming_it(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
) -> None:
    api = dash.simulate_get(
        "/dashboard/api/transfers/count",
        query_string="account=1&account=2",
        headers={"Authorization": f"Bearer {keys['operator']}"},
    )
    assert api.status_code == 400 and "account" in api.json["error"]["message"]
    page = Browser(dash, keys["operator"]).get("/dashboard/transfers", query_string="user=1&user=2")
    assert page.status_code == 400 and "user" in page.text


def test_a_bulk_retry_form_with_an_unknown_field_is_400_and_sends_nothing(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
) -> None:
    tag = uuid.uuid4().hex
    parked = dead_lettered(db, error=f"typo {tag}")
    resp = Browser(dash, keys["operator"]).post(
        "/dashboard/transfers/retry", {"error": tag, "acount": "1"}
    )
    assert resp.status_code == 400 and "acount" in resp.text
    assert sent_ids == [] and transfer_row(db, parked)["dead_lettered_at"] is not None


def test_known_parameters_still_filter_and_page(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
) -> None:
    tag = uuid.uuid4().hex
    first, second = dead_lettered(db, error=f"known {tag}"), dead_lettered(db, error=f"known {tag}")
    bearer = {"Authorization": f"Bearer {keys['operator']}"}
    count = dash.simulate_get(
        "/dashboard/api/transfers/count", params={"error": tag, "state": "dead"}, headers=bearer
    )
    assert count.json["data"] == {"matching": 2, "retryable": 2}
    listed = dash.simulate_get(
        "/dashboard/api/transfers", params={"error": tag, "limit": "1"}, headers=bearer
    )
    assert [t["id"] for t in listed.json["data"]] == [first]
    browser = Browser(dash, keys["operator"])
    page = browser.get(
        "/dashboard/transfers",
        params={"error": tag, "limit": "1", "cursor": listed.json["next_cursor"]},
    )
    assert page.status_code == 200 and f"/dashboard/transfers/{second}" in page.text
    # The filter form sends its blank fields too: they filter nothing.
    blank = browser.get("/dashboard/transfers", query_string=f"state=dead&account=&error={tag}")
    assert blank.status_code == 200 and "2 transfer(s) match" in blank.text
    assert browser.get("/dashboard", params={"refresh": "1"}).status_code == 200


# --- Headers: what a browser is told to refuse ----------------------------------------

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
PROTECTIVE = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class _InlineCode(HTMLParser):
    """What a page holds that its CSP would block: script, inline style, event handlers,
    `javascript:` URLs, and resources from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "iframe", "object", "embed", "base"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action", "formaction") and value is not None:
                if value.strip().lower().startswith("javascript:"):
                    self.found.append(f"<{tag} {name}={value}>")
                if "//" in value and tag != "a":  # a resource loaded from elsewhere
                    self.found.append(f"<{tag} {name}={value}>")


def _inline_code(page: str) -> list[str]:
    parser = _InlineCode()
    parser.feed(page)
    return parser.found


PAGES = [
    "/dashboard",
    "/dashboard?refresh=1",
    "/dashboard/transfers",
    "/dashboard/transfers?state=dead",
    "/dashboard/transfers/retry",
    "/dashboard/transfers/{id}",
    "/dashboard/transfers/{id}/cancel",
    "/dashboard/actions",
    "/dashboard/webhooks",
    "/dashboard/transfers/999999999",  # a 404 page
    "/dashboard/transfers?state=nope",  # a 400 page
]


@pytest.mark.parametrize("template", PAGES)
def test_every_page_sends_the_protective_headers_and_holds_no_inline_code(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    template: str,
) -> None:
    transfer = dead_lettered(db, error=f"headers {uuid.uuid4().hex}")
    resp = Browser(dash, keys["operator"]).get(
        *template.replace("{id}", str(transfer)).split("?", 1)[:1],
        query_string=template.partition("?")[2] or None,
    )
    assert resp.headers["content-type"].startswith("text/html")
    for name, value in PROTECTIVE.items():
        assert resp.headers.get(name) == value, name
    assert resp.headers.get("cache-control") == "no-store"
    assert _inline_code(resp.text) == []
    assert '<link rel="stylesheet" href="/dashboard/static/dashboard.css">' in resp.text


def test_the_login_page_redirects_and_refusals_send_the_protective_headers(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
) -> None:
    login = dash.simulate_get("/dashboard/login")
    refused = dash.simulate_post("/dashboard/login", body="key=x&csrf=y", headers=FORM)
    redirect = dash.simulate_get("/dashboard")
    for resp in (login, refused, redirect):
        for name, value in PROTECTIVE.items():
            assert resp.headers.get(name) == value, (resp.status, name)
        assert resp.headers.get("cache-control") == "no-store"
    assert _inline_code(login.text) == [] and _inline_code(refused.text) == []
    css = dash.simulate_get("/dashboard/static/dashboard.css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert css.headers["cache-control"] == "max-age=3600"  # the one thing worth caching


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/api/overview",
        "/dashboard/api/transfers",
        "/dashboard/api/transfers/count",
        "/dashboard/api/transfers/{id}",
        "/dashboard/api/actions",
        "/dashboard/api/transfers/999999999",  # a 404
        "/dashboard/api/transfers?state=nope",  # a 400
    ],
)
@pytest.mark.parametrize("who", ["operator", None])  # None: a 401
def test_the_json_twin_is_never_cached(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    path: str,
    who: str | None,
) -> None:
    transfer = dead_lettered(db, error=f"cache {uuid.uuid4().hex}")
    headers = {"Authorization": f"Bearer {keys[who]}"} if who else {}
    target, _, query = path.replace("{id}", str(transfer)).partition("?")
    resp = dash.simulate_get(target, query_string=query or None, headers=headers)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("cache-control") == "no-store"
    assert resp.headers.get("x-content-type-options") == "nosniff"
    retry = dash.simulate_post(f"/dashboard/api/transfers/{transfer}/retry", headers=headers)
    assert retry.headers.get("cache-control") == "no-store"


# --- Cancelling asks first ------------------------------------------------------------


def test_cancelling_on_the_dashboard_asks_for_confirmation_first(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
) -> None:
    transfer = dead_lettered(db, amount=4_321, error=f"confirm {uuid.uuid4().hex}")
    browser = Browser(dash, keys["operator"])
    detail = browser.get(f"/dashboard/transfers/{transfer}")
    # The transfer's page offers the confirmation, not the cancel itself.
    assert f'<form method="post" action="/dashboard/transfers/{transfer}/cancel"' not in detail.text
    assert f'<form method="get" action="/dashboard/transfers/{transfer}/cancel"' in detail.text
    # The confirmation names what is cancelled and changes nothing.
    confirm = browser.get(f"/dashboard/transfers/{transfer}/cancel")
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.text and "43.21 EUR" in confirm.text
    assert f'<form method="post" action="/dashboard/transfers/{transfer}/cancel"' in confirm.text
    assert f"Yes, cancel transfer {transfer}" in confirm.text
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    # Its button does it.
    done = browser.post(f"/dashboard/transfers/{transfer}/cancel")
    assert done.status_code == 303
    assert transfer_row(db, transfer)["failure_code"] == "cancelled_by_operator"
    # Afterwards there is nothing left to confirm.
    again = browser.get(f"/dashboard/transfers/{transfer}/cancel")
    assert again.status_code == 200 and "is not dead-lettered" in again.text
    assert "Yes, cancel" not in again.text


def test_a_read_only_key_sees_the_cancel_confirmation_with_its_button_disabled(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
) -> None:
    transfer = dead_lettered(db, error=f"confirm ro {uuid.uuid4().hex}")
    confirm = Browser(dash, keys["read-only"]).get(f"/dashboard/transfers/{transfer}/cancel")
    assert confirm.status_code == 200
    assert f"Yes, cancel transfer {transfer}</button>" in confirm.text
    assert 'class="danger" disabled>' in confirm.text
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
