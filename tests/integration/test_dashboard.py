"""The dashboard over HTTP: who may see and do what, sessions and their cookie, CSRF, the
list of transfers needing attention, retry, bulk retry and cancel, and the action record."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
from dramatiq import Message
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.config import Settings
from shared.ledger import auth
from tests.contract import held_to_document
from tests.dashboard import COOKIE, Browser, dead_lettered, log_in, many_dead_lettered
from tests.helpers import make_user, row_counts, transfer_row

#: Every page, with a concrete id where it takes one.
GET_PAGES = [
    "/dashboard",
    "/dashboard/transfers",
    "/dashboard/transfers/retry",
    "/dashboard/transfers/{id}",
    "/dashboard/actions",
    "/dashboard/webhooks",
]
POST_ACTIONS = [
    "/dashboard/transfers/{id}/retry",
    "/dashboard/transfers/{id}/cancel",
    "/dashboard/transfers/retry",
]


@pytest.fixture(scope="module")
def keys(settings: Settings) -> dict[str, str]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        user = make_user(conn)
        return {
            "operator": auth.create_key(conn, user_id=None, label="dash-operator").key,
            "read-only": auth.create_key(conn, user_id=None, read_only=True, label="viewer").key,
            "user": auth.create_key(conn, user_id=user).key,
        }


@pytest.fixture
def sent_ids() -> list[int]:
    return []


@pytest.fixture
def dash(settings: Settings, pool: ConnectionPool, sent_ids: list[int]) -> Iterator[TestClient]:
    """The real app, whose enqueue sends to the real broker and records the ids sent."""
    from shared.broker.sending import sender
    from web.app import create_app
    from worker.actors import settle_transfer

    broker = settle_transfer.broker  # the broker conftest installed

    send = sender(broker)

    def enqueue(transfer_id: int) -> None:
        send(transfer_id)
        sent_ids.append(transfer_id)

    app = create_app(
        settings,
        pool=pool,
        enqueue=enqueue,
        ping_broker=broker.ping,
        queues=broker,
    )
    yield falcon.testing.TestClient(app)


def _path(template: str, transfer: int) -> str:
    return template.replace("{id}", str(transfer))


# --- Access ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", GET_PAGES + POST_ACTIONS + ["/dashboard/logout"])
def test_without_a_session_every_page_and_action_redirects_to_the_login_page(
    dash: TestClient, db: psycopg.Connection, template: str
) -> None:
    transfer = dead_lettered(db)
    path = _path(template, transfer)
    method = "POST" if template in POST_ACTIONS or template.endswith("logout") else "GET"
    resp = dash.simulate_request(
        method, path, body="csrf=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 303
    assert resp.headers["location"].endswith("/dashboard/login")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


@pytest.mark.parametrize("template", GET_PAGES + POST_ACTIONS)
@pytest.mark.parametrize("who", ["user", "operator"])
def test_a_key_sent_as_bearer_is_no_session_for_the_pages(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], template: str, who: str
) -> None:
    """Pages take a session only: a key in a header (a user's or even an operator's) is
    sent to the login form, and nothing changes."""
    transfer = dead_lettered(db)
    method = "POST" if template in POST_ACTIONS else "GET"
    resp = dash.simulate_request(
        method,
        _path(template, transfer),
        body="csrf=x",
        headers={
            "Authorization": f"Bearer {keys[who]}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert resp.status_code == 303
    assert resp.headers["location"].endswith("/dashboard/login")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


def test_the_login_page_and_the_stylesheet_need_no_session(dash: TestClient) -> None:
    login = dash.simulate_get("/dashboard/login")
    assert login.status_code == 200 and 'name="key"' in login.text
    css = dash.simulate_get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_the_last_hour_keeps_completed_minutes_and_reads_only_the_last_ones(
    db: psycopg.Connection,
) -> None:
    from shared.ledger import overview
    from tests.helpers import make_account, submit
    from web.dashboard.data import LastHour

    cache = LastHour()
    first = cache.rows(db)
    whole = overview.last_hour(db)
    assert len(first) == 60
    assert [(r["minute"], r["settled"], r["failed"]) for r in first] == [
        (r["minute"], r["settled"], r["failed"]) for r in whole
    ]
    # A transfer recorded as failed half an hour ago, after that minute was kept: the whole
    # hour's query counts it, the kept minute does not (it was not read again).
    late = submit(db, make_account(db), make_account(db), 5)
    db.execute(
        "UPDATE transfers SET status = 'failed', failure_code = 'insufficient_funds',"
        " finished_at = date_trunc('minute', now()) - interval '30 minutes' WHERE id = %s",
        (late,),
    )
    kept = {r["minute"]: r["failed"] for r in cache.rows(db)}
    read = {r["minute"]: r["failed"] for r in overview.last_hour(db)}
    # The two reads may fall either side of a minute's turn: compare the minutes both hold.
    differs = [m for m in read if m in kept and read[m] != kept[m]]
    assert len(differs) == 1 and read[differs[0]] == kept[differs[0]] + 1


@pytest.mark.parametrize("template", GET_PAGES)
@pytest.mark.parametrize("who", ["operator", "read-only"])
def test_every_page_is_shown_to_an_operator_session_and_a_read_only_one(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], template: str, who: str
) -> None:
    transfer = dead_lettered(db, error="page check")
    resp = Browser(dash, keys[who]).get(_path(template, transfer))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert ("read-only operator key" in resp.text) == (who == "read-only")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


def test_a_users_key_gets_the_login_page_again_with_an_error_and_no_session(
    dash: TestClient, keys: dict[str, str]
) -> None:
    resp = log_in(dash, keys["user"])
    assert resp.status_code == 403
    assert "needs an operator key" in resp.text
    assert COOKIE not in resp.cookies or resp.cookies[COOKIE].value == ""
    assert 'name="key"' in resp.text


@pytest.mark.parametrize("key", ["settle_" + "A" * 43, "not a key at all", ""])
def test_a_wrong_key_gets_the_login_page_again_with_an_error_and_no_session(
    dash: TestClient, db: psycopg.Connection, key: str
) -> None:
    sessions_before = db.execute("SELECT count(*) FROM dashboard_sessions").fetchone()
    resp = log_in(dash, key)
    assert resp.status_code == 401
    assert "not valid" in resp.text
    assert COOKIE not in resp.cookies or resp.cookies[COOKIE].value == ""
    assert db.execute("SELECT count(*) FROM dashboard_sessions").fetchone() == sessions_before


def test_a_revoked_key_cannot_log_in(dash: TestClient, db: psycopg.Connection) -> None:
    made = auth.create_key(db, user_id=None)
    auth.revoke_key(db, made.id)
    assert log_in(dash, made.key).status_code == 401


def test_the_login_form_refuses_a_post_without_its_csrf_token(
    dash: TestClient, keys: dict[str, str]
) -> None:
    resp = dash.simulate_post(
        "/dashboard/login",
        body=f"key={keys['operator']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 403
    assert COOKIE not in resp.cookies or resp.cookies[COOKIE].value == ""


def test_the_session_cookie_is_httponly_samesite_strict_and_scoped_to_the_dashboard(
    dash: TestClient, keys: dict[str, str]
) -> None:
    resp = log_in(dash, keys["operator"])
    assert resp.status_code == 303 and resp.headers["location"].endswith("/dashboard")
    raw = next(v for k, v in resp.headers.items() if k == "set-cookie" and COOKIE + "=" in v)
    attributes = {a.strip().split("=")[0].lower(): a for a in raw.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"].strip().lower() == "samesite=strict"
    assert attributes["path"].strip() == "Path=/dashboard"
    assert "secure" not in attributes  # plain http, not configured


def test_the_session_cookie_is_secure_over_https_or_when_configured(
    settings: Settings, pool: ConnectionPool, keys: dict[str, str]
) -> None:
    from web.app import create_app

    def cookie_attributes(client: TestClient, **kw: object) -> str:
        form = client.simulate_get("/dashboard/login", **kw)  # type: ignore[arg-type]
        token = form.cookies["settle_dashboard_login"].value
        resp = client.simulate_post(
            "/dashboard/login",
            body=f"key={keys['operator']}&csrf={token}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            cookies={"settle_dashboard_login": token},
            **kw,  # type: ignore[arg-type]
        )
        return next(v for k, v in resp.headers.items() if k == "set-cookie" and COOKIE + "=" in v)

    plain = TestClient(create_app(settings, pool=pool, enqueue=print, ping_broker=lambda: True))
    assert "Secure" in cookie_attributes(plain, protocol="https")
    configured = TestClient(
        create_app(
            settings.with_(dashboard_secure_cookie=True),
            pool=pool,
            enqueue=print,
            ping_broker=lambda: True,
        )
    )
    assert "Secure" in cookie_attributes(configured)


def test_a_forged_cookie_is_no_session(dash: TestClient, keys: dict[str, str]) -> None:
    browser = Browser(dash, keys["operator"])
    session_id, _, mac = browser.cookie.partition(".")
    forged = session_id + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    resp = dash.simulate_get("/dashboard", cookies={COOKIE: forged})
    assert resp.status_code == 303


def test_a_session_idle_longer_than_the_setting_is_over(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], settings: Settings
) -> None:
    browser = Browser(dash, keys["operator"])
    assert browser.get("/dashboard/actions").status_code == 200
    db.execute(
        "UPDATE dashboard_sessions SET last_seen_at = now() - make_interval(secs => %s)"
        " WHERE id_hash = %s",
        (settings.dashboard_idle_seconds + 1, browser.id_hash),
    )
    resp = browser.get("/dashboard/actions")
    assert resp.status_code == 303 and resp.headers["location"].endswith("/dashboard/login")


def test_a_session_in_use_stays_alive(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], settings: Settings
) -> None:
    browser = Browser(dash, keys["operator"])
    db.execute(
        "UPDATE dashboard_sessions SET last_seen_at = now() - make_interval(secs => %s)"
        " WHERE id_hash = %s",
        (settings.dashboard_idle_seconds - 60, browser.id_hash),
    )
    assert browser.get("/dashboard/actions").status_code == 200
    assert browser.get("/dashboard/actions").status_code == 200


def test_revoking_the_key_ends_its_sessions(dash: TestClient, db: psycopg.Connection) -> None:
    made = auth.create_key(db, user_id=None, label="to revoke")
    first, second = Browser(dash, made.key), Browser(dash, made.key)
    assert first.get("/dashboard").status_code == 200
    auth.revoke_key(db, made.id)
    assert first.get("/dashboard").status_code == 303
    assert second.get("/dashboard/transfers").status_code == 303


def test_logging_out_ends_the_session_even_for_a_copy_of_its_cookie(
    dash: TestClient, keys: dict[str, str]
) -> None:
    browser = Browser(dash, keys["operator"])
    resp = browser.post("/dashboard/logout")
    assert resp.status_code == 303 and resp.headers["location"].endswith("/dashboard/login")
    assert resp.cookies[COOKIE].value == ""
    assert browser.get("/dashboard").status_code == 303


def test_logging_out_needs_the_csrf_token(dash: TestClient, keys: dict[str, str]) -> None:
    browser = Browser(dash, keys["operator"])
    assert browser.post("/dashboard/logout", csrf=None).status_code == 403
    assert browser.get("/dashboard").status_code == 200


# --- Actions: roles and CSRF -----------------------------------------------------------


@pytest.mark.parametrize("template", POST_ACTIONS)
def test_a_read_only_session_is_refused_every_action_and_nothing_changes(
    dash: TestClient,
    db: psycopg.Connection,
    keys: dict[str, str],
    sent_ids: list[int],
    template: str,
) -> None:
    transfer = dead_lettered(db, error=f"ro-{uuid.uuid4().hex}")
    browser = Browser(dash, keys["read-only"])
    page = browser.get(f"/dashboard/transfers/{transfer}")
    assert "disabled" in page.text  # its buttons are shown disabled
    before = row_counts(db)
    resp = browser.post(
        _path(template, transfer), {"error": transfer_row(db, transfer)["last_error"]}
    )
    assert resp.status_code == 403
    assert "read_only_key" in resp.text
    assert row_counts(db) == before
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []


@pytest.mark.parametrize("template", POST_ACTIONS)
@pytest.mark.parametrize("csrf", [None, "forged-token"])
def test_an_action_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    dash: TestClient,
    db: psycopg.Connection,
    keys: dict[str, str],
    sent_ids: list[int],
    template: str,
    csrf: str | None,
) -> None:
    transfer = dead_lettered(db, error=f"csrf-{uuid.uuid4().hex}")
    browser = Browser(dash, keys["operator"])
    error = transfer_row(db, transfer)["last_error"]
    resp = browser.post(_path(template, transfer), {"error": error}, csrf=csrf)
    assert resp.status_code == 403
    assert "csrf_token_invalid" in resp.text
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []


def test_another_sessions_csrf_token_is_refused(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    transfer = dead_lettered(db)
    mine, theirs = Browser(dash, keys["operator"]), Browser(dash, keys["operator"])
    resp = mine.post(f"/dashboard/transfers/{transfer}/retry", csrf=theirs.csrf)
    assert resp.status_code == 403
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


# --- Transfers needing attention --------------------------------------------------------


def test_the_list_shows_a_dead_lettered_transfer_with_its_business_fields(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    marker = f"deadlock detected {uuid.uuid4().hex}"
    transfer = dead_lettered(db, amount=12345, error=marker)
    row = transfer_row(db, transfer)
    page = Browser(dash, keys["read-only"]).get("/dashboard/transfers", params={"error": marker})
    assert page.status_code == 200
    assert f'href="/dashboard/transfers/{transfer}"' in page.text
    for shown in (
        "123.45 EUR",
        marker,
        "dead-lettered",
        f"account {row['from_account_id']}",
        f"account {row['to_account_id']}",
    ):
        assert shown in page.text
    assert "1 transfer(s) match" in page.text


def test_the_filters_narrow_the_list(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    tag = uuid.uuid4().hex
    small = dead_lettered(db, amount=100, error=f"{tag} small")
    large = dead_lettered(db, amount=90_000, error=f"{tag} large")
    browser = Browser(dash, keys["operator"])

    def listed(**params: str) -> set[int]:
        page = browser.get("/dashboard/transfers", params={"error": tag, **params})
        assert page.status_code == 200, page.text
        return {t for t in (small, large) if f'href="/dashboard/transfers/{t}"' in page.text}

    assert listed() == {small, large}
    assert listed(min_amount="1000") == {large}
    assert listed(max_amount="1000") == {small}
    account = transfer_row(db, small)["from_account_id"]
    assert listed(account=str(account)) == {small}
    owner = db.execute("SELECT user_id FROM accounts WHERE id = %s", (account,)).fetchone()[0]
    assert listed(user=str(owner)) == {small}
    assert listed(currency="EUR") == {small, large}
    assert listed(currency="USD") == set()
    assert listed(state="failed") == set()
    assert listed(state="dead") == {small, large}
    assert listed(older_than_minutes="5") == set()
    assert listed(failure_code="insufficient_funds") == set()


def test_the_list_pages_by_cursor(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    tag = uuid.uuid4().hex
    ids = [dead_lettered(db, error=tag) for _ in range(3)]
    browser = Browser(dash, keys["operator"])
    first = browser.get("/dashboard/transfers", params={"error": tag, "limit": "2"})
    assert [t for t in ids if f'href="/dashboard/transfers/{t}"' in first.text] == ids[:2]
    import re

    link = re.search(r'href="(/dashboard/transfers\?[^"]*cursor=[^"]+)"', first.text)
    assert link
    second = browser.get(
        link.group(1).replace("&amp;", "&").split("?")[0],
        query_string=link.group(1).replace("&amp;", "&").split("?")[1] + "&limit=2",
    )
    assert [t for t in ids if f'href="/dashboard/transfers/{t}"' in second.text] == ids[2:]


@pytest.mark.parametrize(
    "params",
    [
        {"state": "nope"},
        {"min_amount": "-1"},
        {"currency": "euro"},
        {"cursor": "garbage!"},
        {"account": "1.5"},
    ],
)
def test_a_malformed_filter_is_a_400_page(
    dash: TestClient, keys: dict[str, str], params: dict[str, str]
) -> None:
    resp = Browser(dash, keys["operator"]).get("/dashboard/transfers", params=params)
    assert resp.status_code == 400
    assert "invalid_" in resp.text


def test_an_unknown_transfer_is_a_404_page(dash: TestClient, keys: dict[str, str]) -> None:
    browser = Browser(dash, keys["operator"])
    assert browser.get("/dashboard/transfers/999999999").status_code == 404
    assert browser.get("/dashboard/transfers/abc").status_code == 404


# --- Actions -----------------------------------------------------------------------------


def _actions(db: psycopg.Connection, transfer: int) -> list[tuple[str, int | None, list[int]]]:
    return [
        (r[0], r[1], list(r[2]))
        for r in db.execute(
            "SELECT action, key_id, transfer_ids FROM operator_actions"
            " WHERE transfer_ids @> ARRAY[%s]::bigint[] ORDER BY id",
            (transfer,),
        ).fetchall()
    ]


def _key_id(db: psycopg.Connection, key: str) -> int:
    return auth.authenticate(db, key).key_id or 0


def test_retrying_one_sends_it_again_records_who_did_and_is_idempotent(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], sent_ids: list[int]
) -> None:
    transfer = dead_lettered(db)
    browser = Browser(dash, keys["operator"])
    resp = browser.post(f"/dashboard/transfers/{transfer}/retry")
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/dashboard/transfers/{transfer}"
    assert transfer_row(db, transfer)["dead_lettered_at"] is None
    assert sent_ids == [transfer]
    assert _actions(db, transfer) == [("retry", _key_id(db, keys["operator"]), [transfer])]
    # Again: it is no longer dead-lettered, so nothing is sent and nothing recorded.
    assert browser.post(f"/dashboard/transfers/{transfer}/retry").status_code == 303
    assert sent_ids == [transfer]
    assert len(_actions(db, transfer)) == 1
    page = browser.get(f"/dashboard/transfers/{transfer}")
    assert "retried 1 transfer(s)" in page.text and "dash-operator" in page.text


def test_cancelling_ends_a_dead_lettered_transfer_failed_moving_no_money(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], sent_ids: list[int]
) -> None:
    transfer = dead_lettered(db)
    balances = db.execute("SELECT sum(balance) FILTER (WHERE balance > 0) FROM accounts").fetchone()
    browser = Browser(dash, keys["operator"])
    assert browser.post(f"/dashboard/transfers/{transfer}/cancel").status_code == 303
    row = transfer_row(db, transfer)
    assert (row["status"], row["failure_code"], row["dead_lettered_at"]) == (
        "failed",
        "cancelled_by_operator",
        None,
    )
    assert db.execute(
        "SELECT count(*) FROM entries WHERE transfer_id = %s", (transfer,)
    ).fetchone() == (0,)
    assert (
        db.execute("SELECT sum(balance) FILTER (WHERE balance > 0) FROM accounts").fetchone()
        == balances
    )
    assert _actions(db, transfer) == [("cancel", _key_id(db, keys["operator"]), [transfer])]
    # Idempotent: a second cancel, or a retry, of a failed transfer does nothing.
    assert browser.post(f"/dashboard/transfers/{transfer}/cancel").status_code == 303
    assert browser.post(f"/dashboard/transfers/{transfer}/retry").status_code == 303
    assert len(_actions(db, transfer)) == 1 and sent_ids == []
    assert transfer_row(db, transfer)["status"] == "failed"


def test_an_action_on_an_unknown_transfer_is_a_404(dash: TestClient, keys: dict[str, str]) -> None:
    browser = Browser(dash, keys["operator"])
    assert browser.post("/dashboard/transfers/999999999/retry").status_code == 404
    assert browser.post("/dashboard/transfers/999999999/cancel").status_code == 404


def test_bulk_retry_confirms_the_count_then_sends_thousands_in_batches(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str], sent_ids: list[int]
) -> None:
    from shared.broker.messages import TRANSFER_QUEUE
    from tests.helpers import queued_transfer_ids
    from worker.actors import settle_transfer

    broker = settle_transfer.broker  # the broker conftest installed

    tag = uuid.uuid4().hex
    ids = many_dead_lettered(db, 3000, error=f"bulk {tag}")
    other = dead_lettered(db, error="not matching the filter")
    browser = Browser(dash, keys["operator"])
    listed = browser.get("/dashboard/transfers", params={"error": tag})
    assert "Retry all 3000 dead-lettered transfer(s)" in listed.text
    confirm = browser.get("/dashboard/transfers/retry", params={"error": tag})
    assert '<b id="retry-count">3000</b>' in confirm.text

    try:
        # Each click works for at most BULK_SECONDS; on a slow machine it may take more
        # than one, so click until nothing is left and add up what each one sent.
        sent, clicks = 0, 0
        while True:
            done = browser.post("/dashboard/transfers/retry", {"error": tag})
            assert done.status_code == 200, done.text
            found = re.search(r"Sent (\d+) transfer\(s\) again", done.text)
            assert found is not None, done.text
            if found[1] == "0":
                break
            sent, clicks = sent + int(found[1]), clicks + 1
            assert clicks <= 6
        assert sent == 3000
        assert sorted(sent_ids) == ids
        # Each one's message is in the broker's queue (others' messages may be there too).
        assert set(ids) <= set(queued_transfer_ids(broker, TRANSFER_QUEUE))
        assert db.execute(
            "SELECT count(*) FROM transfers WHERE id = ANY(%s) AND dead_lettered_at IS NULL",
            (ids,),
        ).fetchone() == (3000,)
        assert transfer_row(db, other)["dead_lettered_at"] is not None
        batches = db.execute(
            "SELECT cardinality(transfer_ids), key_id, detail FROM operator_actions"
            " WHERE transfer_ids && %s::bigint[] ORDER BY id",
            (ids,),
        ).fetchall()
        assert sum(b[0] for b in batches) == 3000 and all(b[0] <= 500 for b in batches)
        assert {b[1] for b in batches} == {_key_id(db, keys["operator"])}
        assert all(f"error={tag}" in b[2] for b in batches)
        # Nothing left to retry: the last click sent nothing.
        assert len(sent_ids) == 3000
    finally:
        # Nobody consumes these here; leave the queue as other tests expect it.
        broker.flush(TRANSFER_QUEUE)


def test_the_actions_page_lists_what_operators_did(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    transfer = dead_lettered(db)
    browser = Browser(dash, keys["operator"])
    browser.post(f"/dashboard/transfers/{transfer}/cancel")
    page = Browser(dash, keys["read-only"]).get("/dashboard/actions")
    assert f'href="/dashboard/transfers/{transfer}"' in page.text
    assert "cancelled a dead-lettered transfer" in page.text


# --- Overview ----------------------------------------------------------------------------


def test_the_overview_shows_queues_transfers_charts_processes_and_the_budget(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    dead_lettered(db)
    page = Browser(dash, keys["read-only"]).get("/dashboard")
    assert page.status_code == 200
    for shown in (
        "messages in the dead-letter queue",
        "dead-lettered transfers",
        "in flight",
        "delayed",
        "oldest pending",
        "<svg",
        "Processes alive",
        "Connection budget",
        "pg_stat_activity",
        'http-equiv="refresh"',
    ):
        assert shown in page.text, shown
    assert "<script" not in page.text
    assert "https://" not in page.text  # nothing from elsewhere


# --- The JSON twin ------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, pool: ConnectionPool, sent_ids: list[int]) -> Iterator[TestClient]:
    """The app as `dash` builds it, every answer held to the OpenAPI document."""
    from shared.broker.sending import sender
    from web.app import create_app
    from worker.actors import settle_transfer

    broker = settle_transfer.broker  # the broker conftest installed

    send = sender(broker)

    def enqueue(transfer_id: int) -> None:
        send(transfer_id)
        sent_ids.append(transfer_id)

    app = create_app(settings, pool=pool, enqueue=enqueue, ping_broker=broker.ping, queues=broker)
    with held_to_document(app) as recorder:
        yield TestClient(recorder)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


API_READS = [
    "/dashboard/api/overview",
    "/dashboard/api/transfers",
    "/dashboard/api/transfers/count",
    "/dashboard/api/transfers/{id}",
    "/dashboard/api/actions",
]
API_ACTIONS = [
    "/dashboard/api/transfers/{id}/retry",
    "/dashboard/api/transfers/{id}/cancel",
    "/dashboard/api/transfers/retry",
]


def _call(client: TestClient, template: str, transfer: int, **kw: object):
    path = _path(template, transfer)
    if template in API_ACTIONS:
        body = {"error": transfer_row_error(transfer)} if template.endswith("s/retry") else None
        return client.simulate_post(path, json=body, **kw)  # type: ignore[arg-type]
    return client.simulate_get(path, **kw)  # type: ignore[arg-type]


_errors: dict[int, str] = {}


def transfer_row_error(transfer: int) -> str:
    return _errors[transfer]


def _parked(db: psycopg.Connection) -> int:
    marker = f"api-{uuid.uuid4().hex}"
    transfer = dead_lettered(db, error=marker)
    _errors[transfer] = marker
    return transfer


@pytest.mark.parametrize("template", API_READS + API_ACTIONS)
def test_the_json_twin_without_a_key_or_session_is_401(
    api: TestClient, db: psycopg.Connection, template: str
) -> None:
    transfer = _parked(db)
    resp = _call(api, template, transfer)
    assert (resp.status_code, resp.json["error"]["code"]) == (401, "api_key_missing")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


@pytest.mark.parametrize("template", API_READS + API_ACTIONS)
def test_the_json_twin_refuses_a_users_key(
    api: TestClient, db: psycopg.Connection, keys: dict[str, str], template: str
) -> None:
    transfer = _parked(db)
    resp = _call(api, template, transfer, headers=_bearer(keys["user"]))
    assert (resp.status_code, resp.json["error"]["code"]) == (403, "operator_only")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None


@pytest.mark.parametrize("template", API_READS)
@pytest.mark.parametrize("who", ["operator", "read-only"])
def test_the_json_twin_answers_reads_to_operator_keys(
    api: TestClient, db: psycopg.Connection, keys: dict[str, str], template: str, who: str
) -> None:
    transfer = _parked(db)
    resp = _call(api, template, transfer, headers=_bearer(keys[who]))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("template", API_ACTIONS)
def test_the_json_twin_refuses_a_read_only_keys_actions(
    api: TestClient,
    db: psycopg.Connection,
    keys: dict[str, str],
    sent_ids: list[int],
    template: str,
) -> None:
    transfer = _parked(db)
    resp = _call(api, template, transfer, headers=_bearer(keys["read-only"]))
    assert (resp.status_code, resp.json["error"]["code"]) == (403, "read_only_key")
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None and sent_ids == []


def test_the_json_twin_lists_filters_and_retries_with_an_operator_key(
    api: TestClient, db: psycopg.Connection, keys: dict[str, str], sent_ids: list[int]
) -> None:
    transfer = _parked(db)
    headers = _bearer(keys["operator"])
    listed = api.simulate_get(
        "/dashboard/api/transfers", params={"error": _errors[transfer]}, headers=headers
    )
    assert [t["id"] for t in listed.json["data"]] == [transfer]
    assert listed.json["data"][0]["state"] == "dead-lettered"
    count = api.simulate_get(
        "/dashboard/api/transfers/count", params={"error": _errors[transfer]}, headers=headers
    )
    assert count.json["data"] == {"matching": 1, "retryable": 1}
    done = api.simulate_post(
        "/dashboard/api/transfers/retry", json={"error": _errors[transfer]}, headers=headers
    )
    assert done.json["data"] == {"sent": 1, "batches": 1, "remaining": 0, "notice": None}
    assert sent_ids == [transfer]
    detail = api.simulate_get(f"/dashboard/api/transfers/{transfer}", headers=headers).json["data"]
    assert [a["action"] for a in detail["actions"]] == ["retry"]
    again = api.simulate_post(f"/dashboard/api/transfers/{transfer}/retry", headers=headers)
    assert again.json["data"]["retried"] is False and sent_ids == [transfer]
    actions = api.simulate_get("/dashboard/api/actions", params={"limit": "1"}, headers=headers)
    assert actions.json["data"][0]["transfer_ids"] == [transfer]


def test_the_json_twin_takes_a_session_with_its_csrf_token_in_a_header(
    api: TestClient, dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    transfer = _parked(db)
    browser = Browser(dash, keys["operator"])
    read = api.simulate_get("/dashboard/api/overview", cookies=browser.cookies)
    assert read.status_code == 200
    assert read.json["data"]["transfers"]["dead_lettered"] >= 1
    path = f"/dashboard/api/transfers/{transfer}/cancel"
    refused = api.simulate_post(path, cookies=browser.cookies)
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "csrf_token_invalid")
    assert transfer_row(db, transfer)["status"] == "pending"
    done = api.simulate_post(path, cookies=browser.cookies, headers={"X-CSRF-Token": browser.csrf})
    assert done.json["data"] == {"id": transfer, "cancelled": True, "notice": None}
    assert transfer_row(db, transfer)["failure_code"] == "cancelled_by_operator"


@pytest.mark.parametrize(
    "body",
    [{"state": "nope"}, {"account": "5"}, {"min_amount": -1}, {"account": True}, {"extra": 1}, []],
)
def test_the_json_twin_refuses_a_malformed_bulk_filter(
    api: TestClient, keys: dict[str, str], sent_ids: list[int], body: object
) -> None:
    resp = api.simulate_post(
        "/dashboard/api/transfers/retry", json=body, headers=_bearer(keys["operator"])
    )
    assert (resp.status_code, resp.json["error"]["code"]) == (400, "invalid_request")
    assert sent_ids == []


def test_settle_audit_log_prints_who_did_what_to_which_transfers(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    from tests.integration.test_keys_cli import settle

    transfer = dead_lettered(db)
    Browser(dash, keys["operator"]).post(f"/dashboard/transfers/{transfer}/cancel")
    done = settle("audit-log", "--transfer", str(transfer))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[-1] == "settle audit-log: 1 action(s) shown"
    key_id = _key_id(db, keys["operator"])
    assert f"key {key_id} (dash-operator)  cancel 1 transfer(s): {transfer}" in lines[0]


def test_retrying_and_cancelling_drop_every_dead_letter_none_of_whose_transfers_is_left(
    dash: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    """Dead letters as dramatiq's dispatch.lua leaves them (an id in the XQ sorted set, its
    body in the XQ hash): a message of one transfer, and a batch message of two. A message
    is dropped once none of its transfers is dead-lettered, whichever action ends the last."""
    import time

    from shared.broker.messages import TRANSFER_QUEUE
    from shared.broker.redis_broker import SettleRedisBroker
    from worker.actors import settle_transfer, settle_transfers

    broker = settle_transfer.broker  # the broker conftest installed
    if not isinstance(broker, SettleRedisBroker):
        pytest.skip("writes a dead letter in dramatiq's Redis layout")

    def dead_letter(message: Message[Any]) -> str:
        key = f"{broker.namespace}:{TRANSFER_QUEUE}.XQ"
        broker.client.zadd(key, {message.message_id: int(time.time() * 1000)})
        broker.client.hset(f"{key}.msgs", message.message_id, message.encode())
        return message.message_id

    broker.flush(TRANSFER_QUEUE)
    alone, first, second = dead_lettered(db), dead_lettered(db), dead_lettered(db)
    alone_letter = dead_letter(settle_transfer.message(alone))
    batch_letter = dead_letter(settle_transfers.message([first, second]))
    browser = Browser(dash, keys["operator"])
    page = browser.get("/dashboard").text
    assert "<b>2</b>messages in the dead-letter queue" in page
    try:
        browser.post(f"/dashboard/transfers/{alone}/retry")
        assert set(_letters(broker)) == {batch_letter}
        # The batch's message stays while one of its transfers is dead-lettered...
        browser.post(f"/dashboard/transfers/{first}/retry")
        assert set(_letters(broker)) == {batch_letter}
        # ...and goes with the last, cancelled.
        browser.post(f"/dashboard/transfers/{second}/cancel")
        assert _letters(broker) == {}
        assert alone_letter not in _letters(broker)
    finally:
        broker.flush(TRANSFER_QUEUE)


def _letters(broker: SettleBroker) -> dict[str, set[int]]:
    """Broker id -> transfer ids of each message in the dead-letter queue."""
    carried: dict[str, set[int]] = {}
    for tid, ids in broker.dead_letters().items():
        for mid in ids:
            carried.setdefault(mid, set()).add(tid)
    return carried
