"""The dashboard's edges: bulk retry honours the filter's state, the overview's own reloads
keep no session alive, a forged cookie takes no connection, a broker failure is shown, dead
letters are dropped without reading the whole queue (and a foreign body there is no 500),
the budget behind PgBouncer, and every page escapes what it shows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
import redis
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.errors import BrokerUnavailable
from tests.dashboard import COOKIE, Browser, dead_lettered
from tests.helpers import transfer_row
from tests.integration.test_dashboard import dash, keys, sent_ids  # noqa: F401 (fixtures)


def _app(settings: Settings, pool: ConnectionPool, **kw: Any) -> TestClient:
    from dramatiq import get_broker

    from web.app import create_app

    broker = get_broker()  # the broker conftest installed

    kw.setdefault("queues", broker)
    app = create_app(settings, pool=pool, ping_broker=broker.ping, **kw)
    return falcon.testing.TestClient(app)


# --- 1. A bulk retry sends what its confirmation counted ------------------------------


@pytest.mark.parametrize("state", ["failed", "stuck"])
def test_a_bulk_retry_with_a_state_that_is_not_dead_lettered_sends_nothing(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
    state: str,
) -> None:
    tag = uuid.uuid4().hex
    parked = dead_lettered(db, error=f"state {tag}")
    browser = Browser(dash, keys["operator"])
    confirm = browser.get("/dashboard/transfers/retry", params={"state": state, "error": tag})
    assert '<b id="retry-count">0</b>' in confirm.text
    done = browser.post("/dashboard/transfers/retry", {"state": state, "error": tag})
    assert done.status_code == 200 and "Sent 0 transfer(s) again" in done.text
    assert sent_ids == [] and transfer_row(db, parked)["dead_lettered_at"] is not None
    api = dash.simulate_post(
        "/dashboard/api/transfers/retry",
        json={"state": state, "error": tag},
        headers={"Authorization": f"Bearer {keys['operator']}"},
    )
    assert api.status_code == 200 and api.json["data"]["sent"] == 0
    assert api.json["data"]["remaining"] == 0
    assert sent_ids == [] and transfer_row(db, parked)["dead_lettered_at"] is not None
    # The same filter with state `dead` does retry it.
    api = dash.simulate_post(
        "/dashboard/api/transfers/retry",
        json={"state": "dead", "error": tag},
        headers={"Authorization": f"Bearer {keys['operator']}"},
    )
    assert api.json["data"]["sent"] == 1 and sent_ids == [parked]
    from dramatiq import get_broker

    from shared.broker.messages import TRANSFER_QUEUE

    broker = get_broker()  # the broker conftest installed

    broker.flush(TRANSFER_QUEUE)


# --- 5. The overview's own reloads are not activity -----------------------------------


def test_the_overviews_self_refresh_does_not_keep_an_idle_session_alive(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    settings: Settings,
) -> None:
    browser = Browser(dash, keys["operator"])
    page = browser.get("/dashboard")
    assert 'content="10; url=/dashboard?refresh=1"' in page.text

    def idle_for(seconds: float) -> None:
        db.execute(
            "UPDATE dashboard_sessions SET last_seen_at = now() - make_interval(secs => %s)"
            " WHERE id_hash = %s",
            (seconds, browser.id_hash),
        )

    def idle() -> float:
        row = db.execute(
            "SELECT extract(epoch FROM now() - last_seen_at) FROM dashboard_sessions"
            " WHERE id_hash = %s",
            (browser.id_hash,),
        ).fetchone()
        assert row is not None
        return float(row[0])

    nearly = settings.dashboard_idle_seconds - 60
    idle_for(nearly)
    assert browser.get("/dashboard?refresh=1").status_code == 200
    assert idle() >= nearly  # the reload did not move last_seen_at
    idle_for(settings.dashboard_idle_seconds + 1)
    resp = browser.get("/dashboard?refresh=1")
    assert resp.status_code == 303 and resp.headers["location"].endswith("/dashboard/login")
    # A click by the operator does count.
    other = Browser(dash, keys["operator"])
    db.execute(
        "UPDATE dashboard_sessions SET last_seen_at = now() - make_interval(secs => %s)"
        " WHERE id_hash = %s",
        (nearly, other.id_hash),
    )
    assert other.get("/dashboard").status_code == 200
    row = db.execute(
        "SELECT extract(epoch FROM now() - last_seen_at) FROM dashboard_sessions"
        " WHERE id_hash = %s",
        (other.id_hash,),
    ).fetchone()
    assert row is not None and float(row[0]) < nearly


# --- 6. A forged cookie costs no connection -------------------------------------------


def test_a_forged_cookie_is_refused_without_taking_a_connection(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    settings: Settings,
    pool: ConnectionPool,
) -> None:
    from web.dashboard.access import Access

    access = Access(settings, pool)
    browser = Browser(dash, keys["operator"])
    real = falcon.testing.create_req(headers={"Cookie": f"{COOKIE}={browser.cookie}"})
    assert access.session(real) is not None  # the secret is read now, once
    session_id, _, mac = browser.cookie.partition(".")
    forged_value = session_id + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    forged = falcon.testing.create_req(headers={"Cookie": f"{COOKIE}={forged_value}"})
    before = pool.get_stats().get("requests_num", 0)
    for _ in range(5):
        assert access.session(forged) is None
    assert pool.get_stats().get("requests_num", 0) == before


# --- 7. A broker failure on a single retry is shown -----------------------------------


def test_a_broker_failure_while_retrying_one_is_shown_on_the_page_and_in_json(
    settings: Settings,
    pool: ConnectionPool,
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
) -> None:
    def enqueue(transfer_id: int) -> None:
        raise BrokerUnavailable("the message broker cannot be reached")

    client = _app(settings, pool, enqueue=enqueue)
    browser = Browser(client, keys["operator"])
    first, second = dead_lettered(db), dead_lettered(db)
    page = browser.post(f"/dashboard/transfers/{first}/retry")
    assert page.status_code == 200
    assert 'id="retry-notice"' in page.text and "message broker failed" in page.text
    # Released all the same: plain pending, for the sweeper to send.
    assert transfer_row(db, first)["dead_lettered_at"] is None
    api = client.simulate_post(
        f"/dashboard/api/transfers/{second}/retry",
        headers={"Authorization": f"Bearer {keys['operator']}"},
    )
    assert api.status_code == 200 and api.json["data"]["retried"] is True
    assert "message broker failed" in api.json["data"]["notice"]


# --- 3. Dropping dead letters: HSCAN, batches kept, foreign bodies no 500 --------------


class _Recording(redis.Redis):
    """The real Redis client, noting the name of every command it sends."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


def test_retry_and_cancel_scan_the_dead_letters_and_survive_a_foreign_body(
    settings: Settings,
    pool: ConnectionPool,
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
) -> None:
    from dramatiq import get_broker

    from shared.broker.messages import TRANSFER_QUEUE
    from shared.broker.redis_broker import SettleRedisBroker
    from shared.broker.sending import sender
    from worker.actors import settle_transfer

    broker = get_broker()  # the broker conftest installed

    client = _Recording(connection_pool=broker.client.connection_pool)
    # The same keys, through the recording client.
    queues = SettleRedisBroker(client=client, namespace=broker.namespace, middleware=[])
    app = _app(settings, pool, enqueue=sender(broker), queues=queues)
    key = f"{broker.namespace}:{TRANSFER_QUEUE}.XQ"

    def park(redis_id: str, body: bytes) -> str:
        broker.client.zadd(key, {redis_id: int(time.time() * 1000)})
        broker.client.hset(f"{key}.msgs", redis_id, body)
        return redis_id

    retried, cancelled, batched_with = dead_lettered(db), dead_lettered(db), dead_lettered(db)
    try:
        own = park(str(uuid.uuid4()), settle_transfer.message(retried).encode())
        mine = park(str(uuid.uuid4()), settle_transfer.message(cancelled).encode())
        batch = park(str(uuid.uuid4()), settle_transfer.message([retried, batched_with]).encode())
        foreign = park(str(uuid.uuid4()), b"\xff not a dramatiq message")
        browser = Browser(app, keys["operator"])
        client.commands.clear()
        assert browser.post(f"/dashboard/transfers/{retried}/retry").status_code == 303
        assert browser.post(f"/dashboard/transfers/{cancelled}/cancel").status_code == 303
        assert "HSCAN" in client.commands and "HGETALL" not in client.commands
        left = set(broker.client.hkeys(f"{key}.msgs"))
        assert own.encode() not in left and mine.encode() not in left
        # A batch still carrying another transfer stays; so does a body that is not ours.
        assert batch.encode() in left and foreign.encode() in left
        assert transfer_row(db, cancelled)["failure_code"] == "cancelled_by_operator"
    finally:
        broker.flush(TRANSFER_QUEUE)


# --- 4. The budget behind PgBouncer ---------------------------------------------------


def test_the_overview_metrics_and_status_take_the_budget_from_pgbouncers_side(
    settings: Settings, pool: ConnectionPool, db: psycopg.Connection
) -> None:
    from dramatiq import get_broker

    from shared.ledger.overview import budget_use
    from shared.runtime.metrics import OverviewCollector
    from shared.runtime.status import gather

    broker = get_broker()  # the broker conftest installed

    pooled = settings.with_(
        db_pooler="pgbouncer",
        db_pooler_client_limit=77,
        db_pooler_pool_size=10,
        db_connection_budget=None,
    )
    expected = 77 - pooled.db_reserved_connections
    assert budget_use(db, pooled, str(db.info.dbname)).capacity.available == expected
    assert gather(pooled, db, broker.depths).capacity.available == expected
    budget = [
        s.value
        for m in OverviewCollector(pooled, pool, queue_counts=None).collect()
        if m.name == "settle_connection_budget"
        for s in m.samples
    ]
    assert budget == [expected]


# --- `settle status` takes the dashboard's threshold ----------------------------------


def test_status_defaults_its_pending_threshold_to_the_dashboards(
    settings: Settings, db: psycopg.Connection
) -> None:
    from dramatiq import get_broker

    from shared.runtime.status import gather

    broker = get_broker()  # the broker conftest installed

    threshold = settings.with_(dashboard_pending_threshold_seconds=1234.0)
    status = gather(threshold, db, broker.depths)
    assert status.pending_threshold == 1234.0


# --- Every page escapes what it shows -------------------------------------------------

PAYLOAD = "<script>alert(1)</script>\"'><img src=x>"


def _escaped(text: str, *, shown: bool = True) -> bool:
    """No markup of PAYLOAD came back raw; `shown`: its text is there, escaped."""
    raw = "<script>" in text or "<img src=x>" in text
    return not raw and (not shown or "&lt;script&gt;" in text)


@pytest.fixture
def hostile(db: psycopg.Connection) -> Iterator[tuple[int, str]]:
    """A dead-lettered transfer whose last error is markup, and the tag to find it by."""
    tag = uuid.uuid4().hex
    yield dead_lettered(db, error=f"{tag} {PAYLOAD}"), tag


def test_the_list_escapes_the_last_error_and_the_filter(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    hostile: tuple[int, str],
) -> None:
    transfer, tag = hostile
    page = Browser(dash, keys["operator"]).get(
        "/dashboard/transfers", params={"error": f"{tag} {PAYLOAD}"}
    )
    assert page.status_code == 200 and f">{transfer}</a>" in page.text
    assert _escaped(page.text)


def test_a_transfers_page_escapes_its_last_error_and_the_actions_detail(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    hostile: tuple[int, str],
) -> None:
    transfer, tag = hostile
    browser = Browser(dash, keys["operator"])
    assert _escaped(browser.get(f"/dashboard/transfers/{transfer}").text)
    # A bulk retry records its filter (the markup) in the action's detail.
    from dramatiq import get_broker

    from shared.broker.messages import TRANSFER_QUEUE

    broker = get_broker()  # the broker conftest installed

    try:
        done = browser.post("/dashboard/transfers/retry", {"error": f"{tag} {PAYLOAD}"})
        assert "Sent 1 transfer(s) again" in done.text and _escaped(done.text, shown=False)
        assert _escaped(browser.get(f"/dashboard/transfers/{transfer}").text)
        assert _escaped(browser.get("/dashboard/actions").text)
    finally:
        broker.flush(TRANSFER_QUEUE)


def test_the_confirmation_escapes_the_filter(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    hostile: tuple[int, str],
) -> None:
    _, tag = hostile
    page = Browser(dash, keys["operator"]).get(
        "/dashboard/transfers/retry", params={"error": f"{tag} {PAYLOAD}"}
    )
    assert '<b id="retry-count">1</b>' in page.text and _escaped(page.text)


def test_the_overview_and_error_pages_escape_what_they_echo(
    dash: TestClient,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
    hostile: tuple[int, str],
) -> None:
    browser = Browser(dash, keys["operator"])
    assert "<script>" not in browser.get("/dashboard").text
    from urllib.parse import quote

    # No slash: the segment must reach the transfer page's route.
    missing = browser.get("/dashboard/transfers/" + quote("<script>\"'><img src=x>", safe=""))
    assert missing.status_code == 404 and _escaped(missing.text)
    bad = browser.get("/dashboard/transfers", params={"currency": PAYLOAD})
    assert bad.status_code == 400 and "<script>" not in bad.text
    login = dash.simulate_post(
        "/dashboard/login",
        body=f"key={quote(PAYLOAD)}&csrf=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "<script>" not in login.text and "<img src=x>" not in login.text
