"""The dashboard's webhooks pages and their JSON twin, on a database of their own (they list
every endpoint, and retried deliveries fall due): endpoints failing first, an endpoint's
deliveries, a delivery's attempts, retrying one failed delivery or all of an endpoint's
(recorded as operator actions, refused to read-only keys), strict parameters, escaping and
the protective headers. Every JSON answer is held to the OpenAPI document."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import psycopg
import pytest
from falcon.testing import TestClient
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import auth
from shared.ledger.auth import SYSTEM
from shared.testing.scratch import scratch_database
from shared.webhooks import attempts, deliveries, endpoints
from shared.webhooks.addresses import parse_url
from shared.webhooks.attempts import DeliveryPolicy
from shared.webhooks.deliveries import Backoff
from tests.contract import held_to_document
from tests.dashboard import Browser, webhook_delivery, webhook_endpoint
from tests.helpers import fund, make_account, opened_pool
from tests.integration.test_dashboard_escaping import assert_shown_as_text, hostile
from tests.integration.test_dashboard_hardening import PROTECTIVE, _inline_code
from tests.receivers import RecordingReceiver
from web.app import create_app

ERROR_500 = "HTTP 500 from the receiver"


@pytest.fixture(scope="module")
def hooks_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_dash_hooks") as url:
        yield url


@pytest.fixture(scope="module")
def hooks_pool(settings: Settings, hooks_db: str) -> Iterator[ConnectionPool]:
    with opened_pool(settings.with_(database_url=hooks_db), "web-dash-hooks", size=2) as pool:
        yield pool


@pytest.fixture
def conn(hooks_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hooks_db, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def keys(hooks_db: str) -> dict[str, str]:
    with psycopg.connect(hooks_db, autocommit=True) as c:
        from tests.helpers import make_user

        return {
            "operator": auth.create_key(c, user_id=None, label="hooks-operator").key,
            "read-only": auth.create_key(c, user_id=None, read_only=True, label="viewer").key,
            "user": auth.create_key(c, user_id=make_user(c)).key,
        }


@pytest.fixture
def dash(settings: Settings, hooks_db: str, hooks_pool: ConnectionPool) -> Iterator[TestClient]:
    """The real app on this module's database; retrying needs no broker, so the app has no
    broker to send to (a test sending something fails)."""

    def never(*_: object) -> None:
        raise AssertionError("retrying a webhook delivery sends no message itself")

    app = create_app(
        settings.with_(database_url=hooks_db), pool=hooks_pool, enqueue=never, ping_broker=never
    )
    with held_to_document(app) as recorder:
        yield TestClient(recorder)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def delivery_row(conn: psycopg.Connection, delivery: int) -> dict[str, object]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT status, attempts, enqueued_at, finished_at, next_attempt_at <= now() AS due,"
            " retry_until - now() AS window FROM webhook_deliveries WHERE id = %s",
            (delivery,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def actions_on(conn: psycopg.Connection, endpoint: int) -> list[dict[str, object]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.action, a.transfer_ids, a.webhook_delivery_ids, k.label"
            " FROM operator_actions a LEFT JOIN api_keys k ON k.id = a.key_id"
            " WHERE a.webhook_endpoint_id = %s ORDER BY a.id",
            (endpoint,),
        )
        return cur.fetchall()


def assert_retried(row: dict[str, object], settings: Settings) -> None:
    """Set pending as migration 0013 says: due now, no message known to carry it, a fresh
    window of WEBHOOK_RETRY_HOURS, as a new delivery gets."""
    assert row["status"] == "pending" and row["due"] is True
    assert row["enqueued_at"] is None and row["finished_at"] is None
    window = row["window"]
    assert isinstance(window, datetime.timedelta)
    full = datetime.timedelta(hours=settings.webhook_retry_hours)
    assert full - datetime.timedelta(minutes=5) < window <= full


# --- What the pages show ------------------------------------------------------------------


def test_the_webhooks_page_lists_failing_endpoints_first_with_their_last_error(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    healthy = webhook_endpoint(conn, "http://127.0.0.1:9/healthy")
    webhook_delivery(conn, healthy, "delivered", [(200, None)])
    retrying = webhook_endpoint(conn, "http://127.0.0.1:9/retrying")
    webhook_delivery(conn, retrying, "pending", [(503, "HTTP 503 from the receiver")])
    failing = webhook_endpoint(conn, "http://127.0.0.1:9/failing")
    for _ in range(2):
        webhook_delivery(conn, failing, "failed", [(500, ERROR_500)] * 3)

    listed = dash.simulate_get(
        "/dashboard/api/webhooks", params={"limit": "1000"}, headers=bearer(keys["read-only"])
    )
    assert listed.status_code == 200, listed.text
    order = [row["id"] for row in listed.json["data"]]
    assert order.index(failing) < order.index(retrying) < order.index(healthy)
    by_id = {row["id"]: row for row in listed.json["data"]}
    assert (by_id[failing]["failed"], by_id[failing]["retrying"]) == (2, 0)
    assert (by_id[failing]["last_status_code"], by_id[failing]["last_error"]) == (500, ERROR_500)
    assert (by_id[retrying]["failed"], by_id[retrying]["retrying"]) == (0, 1)
    assert by_id[healthy]["failed"] == 0 and by_id[healthy]["last_error"] is None
    assert by_id[healthy]["last_attempt_status_code"] == 200
    assert listed.json["total"] >= 3

    page = Browser(dash, keys["read-only"]).get("/dashboard/webhooks")
    assert page.status_code == 200
    text = page.text
    assert text.index("/failing") < text.index("/retrying") < text.index("/healthy")
    assert ERROR_500 in text
    assert '<a href="/dashboard/webhooks">Webhooks</a>' in text  # in the navigation


def test_an_endpoint_page_shows_its_deliveries_and_a_delivery_page_each_attempt(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    failed = webhook_delivery(
        conn, endpoint, "failed", [(None, "connection refused"), (500, ERROR_500)]
    )
    delivered = webhook_delivery(conn, endpoint, "delivered", [(204, None)])
    browser = Browser(dash, keys["operator"])

    page = browser.get(f"/dashboard/webhooks/{endpoint}")
    assert page.status_code == 200
    assert f"/dashboard/webhooks/{endpoint}/deliveries/{failed}" in page.text
    assert f"/dashboard/webhooks/{endpoint}/deliveries/{delivered}" in page.text
    assert ERROR_500 in page.text and "Retry all 1 failed deliveries" in page.text
    only_failed = browser.get(f"/dashboard/webhooks/{endpoint}", params={"status": "failed"})
    assert f"deliveries/{failed}" in only_failed.text
    assert f"deliveries/{delivered}" not in only_failed.text

    detail = browser.get(f"/dashboard/webhooks/{endpoint}/deliveries/{failed}")
    assert detail.status_code == 200
    assert "connection refused" in detail.text and ERROR_500 in detail.text
    assert "Retry this delivery" in detail.text

    api = dash.simulate_get(
        f"/dashboard/api/webhooks/{endpoint}/deliveries/{failed}", headers=bearer(keys["operator"])
    )
    assert api.status_code == 200
    made = api.json["data"]["attempts_made"]
    assert [(a["status_code"], a["error"]) for a in made] == [
        (None, "connection refused"),
        (500, ERROR_500),
    ]
    counts = dash.simulate_get(
        f"/dashboard/api/webhooks/{endpoint}", headers=bearer(keys["operator"])
    ).json["data"]["counts"]
    assert counts == {"pending": 0, "delivered": 1, "failed": 1, "cancelled": 0}


def test_the_deliveries_of_an_endpoint_page_by_cursor_newest_first(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    made = [webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)]) for _ in range(5)]
    seen: list[int] = []
    params = {"limit": "2"}
    while True:
        answer = dash.simulate_get(
            f"/dashboard/api/webhooks/{endpoint}/deliveries",
            params=params,
            headers=bearer(keys["operator"]),
        )
        assert answer.status_code == 200, answer.text
        seen += [row["id"] for row in answer.json["data"]]
        if answer.json["next_cursor"] is None:
            break
        params = {"limit": "2", "cursor": answer.json["next_cursor"]}
    assert seen == sorted(made, reverse=True)


def test_a_delivery_of_another_endpoint_and_unknown_ids_are_404(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    one, other = webhook_endpoint(conn), webhook_endpoint(conn)
    delivery = webhook_delivery(conn, one, "failed", [(500, ERROR_500)])
    browser = Browser(dash, keys["operator"])
    for path, code in (
        (f"/dashboard/webhooks/{other}/deliveries/{delivery}", "webhook_delivery_not_found"),
        ("/dashboard/webhooks/999999999", "webhook_endpoint_not_found"),
        ("/dashboard/webhooks/nope", "webhook_endpoint_not_found"),
        (f"/dashboard/webhooks/{one}/deliveries/0", "webhook_delivery_not_found"),
    ):
        page = browser.get(path)
        assert page.status_code == 404 and code in page.text, path
    answer = browser.post(f"/dashboard/webhooks/{other}/deliveries/{delivery}/retry")
    assert answer.status_code == 404
    assert delivery_row(conn, delivery)["status"] == "failed"
    assert actions_on(conn, one) == [] and actions_on(conn, other) == []


# --- Retrying -----------------------------------------------------------------------------


def test_retrying_a_failed_delivery_sets_it_pending_and_records_the_action(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str], settings: Settings
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    untouched = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    browser = Browser(dash, keys["operator"])

    answer = browser.post(f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}/retry")
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}"
    assert_retried(delivery_row(conn, delivery), settings)
    assert delivery_row(conn, delivery)["attempts"] == 1  # its history is kept
    assert delivery_row(conn, untouched)["status"] == "failed"
    assert actions_on(conn, endpoint) == [
        {
            "action": "retry_webhook",
            "transfer_ids": [],
            "webhook_delivery_ids": [delivery],
            "label": "hooks-operator",
        }
    ]
    shown = browser.get("/dashboard/actions").text
    assert f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}" in shown

    # Pending now: a second retry changes nothing and records nothing.
    again = dash.simulate_post(
        f"/dashboard/api/webhooks/{endpoint}/deliveries/{delivery}/retry",
        headers=bearer(keys["operator"]),
    )
    assert again.status_code == 200 and again.json["data"] == {"id": delivery, "retried": False}
    assert len(actions_on(conn, endpoint)) == 1


def test_retrying_all_failed_deliveries_of_an_endpoint_leaves_the_others_alone(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str], settings: Settings
) -> None:
    endpoint, neighbour = webhook_endpoint(conn), webhook_endpoint(conn)
    failed = [webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)]) for _ in range(3)]
    delivered = webhook_delivery(conn, endpoint, "delivered", [(200, None)])
    cancelled = webhook_delivery(conn, endpoint, "cancelled")
    elsewhere = webhook_delivery(conn, neighbour, "failed", [(500, ERROR_500)])

    page = Browser(dash, keys["operator"]).post(f"/dashboard/webhooks/{endpoint}/retry")
    assert page.status_code == 200
    assert "Set 3 failed delivery(ies) pending again" in page.text
    for delivery in failed:
        assert_retried(delivery_row(conn, delivery), settings)
    assert delivery_row(conn, delivered)["status"] == "delivered"
    assert delivery_row(conn, cancelled)["status"] == "cancelled"
    assert delivery_row(conn, elsewhere)["status"] == "failed"
    recorded = actions_on(conn, endpoint)
    assert [(a["action"], sorted(a["webhook_delivery_ids"])) for a in recorded] == [
        ("retry_webhook", sorted(failed))
    ]
    assert actions_on(conn, neighbour) == []

    none_left = dash.simulate_post(
        f"/dashboard/api/webhooks/{endpoint}/retry", headers=bearer(keys["operator"])
    )
    assert none_left.json["data"] == {"endpoint_id": endpoint, "retried": 0}
    assert len(actions_on(conn, endpoint)) == 1


def test_the_deliveries_of_a_deleted_endpoint_are_not_retried(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    conn.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = %s", (endpoint,))
    headers = bearer(keys["operator"])
    all_failed = dash.simulate_post(f"/dashboard/api/webhooks/{endpoint}/retry", headers=headers)
    assert all_failed.status_code == 404
    one = dash.simulate_post(
        f"/dashboard/api/webhooks/{endpoint}/deliveries/{delivery}/retry", headers=headers
    )
    assert one.status_code == 200 and one.json["data"]["retried"] is False
    assert delivery_row(conn, delivery)["status"] == "failed"
    assert actions_on(conn, endpoint) == []
    page = Browser(dash, keys["operator"]).get(f"/dashboard/webhooks/{endpoint}")
    assert "Deleted" in page.text and "Retry all" not in page.text


def test_a_read_only_key_sees_disabled_buttons_and_may_not_retry(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    browser = Browser(dash, keys["read-only"])
    for path, label in (
        (f"/dashboard/webhooks/{endpoint}", "Retry all 1 failed deliveries"),
        (f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}", "Retry this delivery"),
    ):
        page = browser.get(path)
        assert f"<button disabled>{label}</button>" in page.text, path
        assert "(read-only key)" in page.text
    for path in (
        f"/dashboard/webhooks/{endpoint}/retry",
        f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}/retry",
    ):
        refused = browser.post(path)
        assert refused.status_code == 403 and "read_only_key" in refused.text, path
        for key, code in (("read-only", "read_only_key"), ("user", "operator_only")):
            api = dash.simulate_post(path.replace("/dashboard/", "/dashboard/api/"),
                                     headers=bearer(keys[key]))  # fmt: skip
            assert api.status_code == 403 and api.json["error"]["code"] == code, (path, key)
    assert delivery_row(conn, delivery)["status"] == "failed"
    assert actions_on(conn, endpoint) == []


def test_a_retry_without_the_csrf_token_or_with_extra_fields_changes_nothing(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    browser = Browser(dash, keys["operator"])
    path = f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}/retry"
    assert browser.post(path, csrf=None).status_code == 403
    assert browser.post(path, csrf="forged").status_code == 403
    extra = browser.post(f"/dashboard/webhooks/{endpoint}/retry", {"status": "delivered"})
    assert extra.status_code == 400 and "status" in extra.text
    session = dash.simulate_post(
        f"/dashboard/api/webhooks/{endpoint}/retry", cookies=browser.cookies
    )
    assert session.status_code == 403
    assert session.json["error"]["code"] == "csrf_token_invalid"
    assert delivery_row(conn, delivery)["status"] == "failed"
    assert actions_on(conn, endpoint) == []


# --- Strict parameters, escaping, headers -------------------------------------------------


@pytest.mark.parametrize(
    ("template", "query", "named"),
    [
        ("/dashboard/webhooks", "limt=5", "limt"),
        ("/dashboard/webhooks/{e}", "stauts=failed", "stauts"),
        ("/dashboard/webhooks/{e}", "status=broken", "status"),
        ("/dashboard/webhooks/{e}/deliveries/{d}", "verbose=1", "verbose"),
        ("/dashboard/webhooks/{e}", "status=failed&status=delivered", "status"),
    ],
)
@pytest.mark.parametrize("twin", [False, True])
def test_an_unknown_or_bad_parameter_is_400_naming_it(
    dash: TestClient,
    conn: psycopg.Connection,
    keys: dict[str, str],
    template: str,
    query: str,
    named: str,
    twin: bool,
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    path = template.replace("{e}", str(endpoint)).replace("{d}", str(delivery))
    if twin:
        if template == "/dashboard/webhooks/{e}":
            path += "/deliveries"  # the twin lists deliveries on a path of their own
        answer = dash.simulate_get(
            path.replace("/dashboard/", "/dashboard/api/"),
            query_string=query,
            headers=bearer(keys["operator"]),
        )
        assert answer.status_code == 400, answer.text
        assert answer.json["error"]["code"] == "invalid_request"
        assert named in answer.json["error"]["message"]
    else:
        page = Browser(dash, keys["operator"]).get(path, query_string=query)
        assert page.status_code == 400, page.text[:300]
        assert "invalid_request" in page.text and named in page.text


def test_urls_and_errors_holding_markup_show_as_text(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    """A receiver's error text is whatever it answered; a URL is checked when it is made,
    but the pages must not rely on that."""
    url = "http://127.0.0.1:9/" + hostile("url")
    error, attempt_error = hostile("last-error"), hostile("attempt-error")
    endpoint = webhook_endpoint(conn, url)
    delivery = webhook_delivery(conn, endpoint, "failed", [(None, attempt_error), (500, error)])
    browser = Browser(dash, keys["operator"])
    assert_shown_as_text(browser.get("/dashboard/webhooks", params={"limit": "1000"}).text, url)
    endpoint_page = browser.get(f"/dashboard/webhooks/{endpoint}").text
    assert_shown_as_text(endpoint_page, url)
    assert "&lt;script&gt;" in endpoint_page  # the error, cut short but escaped
    detail = browser.get(f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}").text
    assert_shown_as_text(detail, url, error, attempt_error)


def test_every_webhooks_page_sends_the_protective_headers_and_holds_no_inline_code(
    dash: TestClient, conn: psycopg.Connection, keys: dict[str, str]
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    browser = Browser(dash, keys["operator"])
    for path in (
        "/dashboard/webhooks",
        f"/dashboard/webhooks/{endpoint}",
        f"/dashboard/webhooks/{endpoint}?status=failed",
        f"/dashboard/webhooks/{endpoint}/deliveries/{delivery}",
        "/dashboard/webhooks/999999999",
    ):
        base, _, query = path.partition("?")
        resp = browser.get(base, query_string=query or None)
        assert resp.headers["content-type"].startswith("text/html"), path
        for name, value in PROTECTIVE.items():
            assert resp.headers.get(name) == value, (path, name)
        assert resp.headers.get("cache-control") == "no-store"
        assert _inline_code(resp.text) == [], path


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/dashboard/webhooks"),
        ("GET", "/dashboard/webhooks/{e}"),
        ("GET", "/dashboard/webhooks/{e}/deliveries/{d}"),
        ("POST", "/dashboard/webhooks/{e}/retry"),
        ("POST", "/dashboard/webhooks/{e}/deliveries/{d}/retry"),
    ],
)
def test_without_a_session_every_webhooks_page_and_action_redirects_to_the_login_page(
    dash: TestClient, conn: psycopg.Connection, method: str, template: str
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, ERROR_500)])
    resp = dash.simulate_request(
        method,
        template.replace("{e}", str(endpoint)).replace("{d}", str(delivery)),
        body="csrf=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 303 and resp.headers["location"].endswith("/dashboard/login")
    assert delivery_row(conn, delivery)["status"] == "failed"


def test_a_delivery_given_up_on_and_retried_reaches_its_receiver_once_it_answers(
    dash: TestClient,
    conn: psycopg.Connection,
    keys: dict[str, str],
    settings: Settings,
    hooks_pool: ConnectionPool,
) -> None:
    """The whole way, with the delivery side's own functions and a real receiver: a
    delivery fails until its window ends, the receiver is fixed, an operator retries it,
    and the dispatcher's next round sends it and it is delivered."""
    window = datetime.timedelta(hours=settings.webhook_retry_hours)
    policy = DeliveryPolicy(
        secret_key=settings.secret_key,
        allow_private=True,
        backoff=Backoff(first=60, cap=600, window=window),
    )
    receiver = RecordingReceiver(status=500)
    try:
        new = endpoints.NewEndpoint(parse_url(receiver.url), ("transfer.settled",))
        hook = endpoints.create_endpoint(conn, new, by=SYSTEM, secret_key=settings.secret_key)
        fund(conn, make_account(conn, treasury=True), make_account(conn), 250)
        while deliveries.dispatch_batch(conn, batch=100, window=window) >= 100:
            pass
        [delivery] = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM webhook_deliveries WHERE endpoint_id = %s", (hook["id"],)
            ).fetchall()
        ]
        conn.execute(  # its last chance: the window ends with this attempt
            "UPDATE webhook_deliveries SET retry_until = now() WHERE id = %s", (delivery,)
        )
        assert attempts.deliver(hooks_pool, delivery, policy) == "failed"
        assert delivery not in deliveries.claim_due(conn, batch=10_000, grace_seconds=30)

        receiver.status = 200
        answer = Browser(dash, keys["operator"]).post(
            f"/dashboard/webhooks/{hook['id']}/deliveries/{delivery}/retry"
        )
        assert answer.status_code == 303
        assert delivery in deliveries.claim_due(conn, batch=10_000, grace_seconds=30)
        assert attempts.deliver(hooks_pool, delivery, policy) == "delivered"
        first, second = receiver.received()
        assert first.headers["settle-event-id"] == second.headers["settle-event-id"]
        assert first.body == second.body
    finally:
        receiver.stop()
        conn.execute(
            "UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL"
            " AND user_id IS NULL"
        )
