"""The dashboard through a broker outage, on a broker the test stops itself (a Redis of its
own, or a RabbitMQ vhost of its own, deleted): every page and every action, as HTML and as
the JSON twin. Pages that read only Postgres answer as usual and the overview shows its
queues as unavailable; every action on transfers answers 503 `broker_unavailable` with
Retry-After and changes nothing, while retrying webhook deliveries (Postgres alone) works;
nothing answers 500."""

from __future__ import annotations

import contextlib
import html
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import falcon.testing
import psycopg
import pytest
from falcon.testing import Result, TestClient
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.broker.sending import sender
from shared.config import Settings
from shared.config.brokers import broker_name
from shared.ledger import auth
from tests.dashboard import Browser, dead_lettered, webhook_delivery, webhook_endpoint
from tests.helpers import transfer_row


@pytest.fixture
def stoppable(broker_url: str, tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """(URL, stop) of a broker of the test's own: a Valkey server (never the suite's Redis),
    or the test's RabbitMQ vhost, which stopping deletes (and which is made again after)."""
    if broker_name(broker_url) == "redis":
        from tests.faults.servers import DedicatedRedis

        server = DedicatedRedis(tmp_path / "redis")
        try:
            yield server.url, server.close
        finally:
            server.close()
        return
    from shared.testing.scratch import add_vhost, rabbitmqctl, vhost_of

    vhost, user = vhost_of(broker_url)
    stopped = []

    def stop() -> None:
        rabbitmqctl("delete_vhost", vhost)
        stopped.append(vhost)

    try:
        yield broker_url, stop
    finally:
        if stopped:
            add_vhost(vhost, user)  # for the fixture that made it to delete


@pytest.fixture
def own_broker(
    settings: Settings, stoppable: tuple[str, Callable[[], None]]
) -> Iterator[tuple[Settings, SettleBroker, Callable[[], None]]]:
    """The settings naming a broker of the test's own, that broker (it has answered, and its
    client holds a connection to lose), and the function that stops it."""
    from worker.actors import create_broker

    url, stop = stoppable
    on_it = settings.with_(broker_url=url, broker_namespace=f"outage-{uuid.uuid4().hex[:8]}")
    broker, _ = create_broker(on_it)
    broker.depths()
    try:
        yield on_it, broker, stop
    finally:
        broker.close()


@contextlib.contextmanager
def _client(
    settings: Settings,
    pool: ConnectionPool,
    *,
    ping: SettleBroker,
    sending: SettleBroker,
    queues: SettleBroker,
) -> Iterator[TestClient]:
    """The real app, asking `ping` whether the broker answers, sending through `sending` and
    counting and dropping dead letters on `queues`, as web wires one broker to all three.
    Every JSON answer is held to the OpenAPI document."""
    from tests.contract import held_to_document
    from web.app import create_app

    app = create_app(
        settings, pool=pool, enqueue=sender(sending), ping_broker=ping.ping, queues=queues
    )
    with held_to_document(app) as recorder:
        yield falcon.testing.TestClient(recorder)


def _unavailable(answer: Result, *, html: bool) -> bool:
    """A 503 `broker_unavailable` that tells when to try again."""
    if answer.status_code != 503 or "retry-after" not in answer.headers:
        return False
    if html:
        return "<code>broker_unavailable</code>" in answer.text
    return bool(answer.json["error"]["code"] == "broker_unavailable")


def test_a_broker_outage_answers_every_dashboard_page_and_action_without_a_500(
    own_broker: tuple[Settings, SettleBroker, Callable[[], None]],
    pool: ConnectionPool,
    db: psycopg.Connection,
) -> None:
    settings, broker, stop_broker = own_broker
    with _client(settings, pool, ping=broker, sending=broker, queues=broker) as client:
        key = auth.create_key(db, user_id=None, label="outage").key
        bearer = {"Authorization": f"Bearer {key}"}
        browser = Browser(client, key)
        tag = uuid.uuid4().hex
        retried, cancelled, bulk = (dead_lettered(db, error=f"outage {tag}") for _ in range(3))
        endpoint = webhook_endpoint(db)
        hook_one, hook_all = (
            webhook_delivery(db, endpoint, "failed", [(500, f"outage {tag}")]) for _ in range(2)
        )
        actions_before = db.execute(
            "SELECT count(*) FROM operator_actions WHERE webhook_endpoint_id IS NULL"
        ).fetchone()

        stop_broker()

        # Postgres alone answers these, as ever.
        for path in (
            "/dashboard/transfers",
            f"/dashboard/transfers?error={tag}",
            f"/dashboard/transfers/retry?error={tag}",
            f"/dashboard/transfers/{retried}",
            f"/dashboard/transfers/{cancelled}/cancel",  # the confirmation
            "/dashboard/actions",
            "/dashboard/webhooks",
            f"/dashboard/webhooks/{endpoint}",
            f"/dashboard/webhooks/{endpoint}/deliveries/{hook_one}",
        ):
            page = browser.get(path)
            assert page.status_code == 200, (path, page.status_code, page.text[:300])
        assert client.simulate_get("/dashboard/login").status_code == 200
        for path in (
            "/dashboard/api/transfers",
            f"/dashboard/api/transfers/count?error={tag}",
            f"/dashboard/api/transfers/{retried}",
            "/dashboard/api/actions",
            "/dashboard/api/webhooks",
            f"/dashboard/api/webhooks/{endpoint}",
            f"/dashboard/api/webhooks/{endpoint}/deliveries",
            f"/dashboard/api/webhooks/{endpoint}/deliveries/{hook_one}",
        ):
            answer = client.simulate_get(path, headers=bearer)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])

        # The overview shows what it can, and says the queues cannot be read.
        page = browser.get("/dashboard")
        assert page.status_code == 200, page.text[:300]
        assert "the message broker is unavailable" in page.text
        overview = client.simulate_get("/dashboard/api/overview", headers=bearer)
        assert overview.status_code == 200, overview.text[:300]
        assert overview.json["data"]["queues"] is None
        assert "the message broker is unavailable" in overview.json["data"]["queue_error"]

        # Every action needs the broker: 503, and nothing changed.
        for path, fields in (
            (f"/dashboard/transfers/{retried}/retry", {}),
            (f"/dashboard/transfers/{cancelled}/cancel", {}),
            ("/dashboard/transfers/retry", {"error": tag}),
        ):
            answer = browser.post(path, fields)
            assert _unavailable(answer, html=True), (path, answer.status_code, answer.text[:300])
        for path, body in (
            (f"/dashboard/api/transfers/{retried}/retry", None),
            (f"/dashboard/api/transfers/{cancelled}/cancel", None),
            ("/dashboard/api/transfers/retry", {"error": tag}),
        ):
            answer = client.simulate_post(path, json=body, headers=bearer)
            assert _unavailable(answer, html=False), (path, answer.status_code, answer.text[:300])
        for transfer in (retried, cancelled, bulk):
            row = transfer_row(db, transfer)
            assert row["status"] == "pending" and row["dead_lettered_at"] is not None
        assert (
            db.execute(
                "SELECT count(*) FROM operator_actions WHERE webhook_endpoint_id IS NULL"
            ).fetchone()
            == actions_before
        )

        # Retrying webhook deliveries needs Postgres only (the dispatcher sends them once the
        # broker is back): it works, and is recorded.
        one = browser.post(f"/dashboard/webhooks/{endpoint}/deliveries/{hook_one}/retry")
        assert one.status_code == 303, one.text[:300]
        every = client.simulate_post(f"/dashboard/api/webhooks/{endpoint}/retry", headers=bearer)
        assert every.status_code == 200 and every.json["data"]["retried"] == 1, every.text
        statuses = db.execute(
            "SELECT array_agg(status ORDER BY id) FROM webhook_deliveries WHERE endpoint_id = %s",
            (endpoint,),
        ).fetchone()
        assert statuses == (["pending", "pending"],)
        assert db.execute(
            "SELECT count(*) FROM operator_actions WHERE webhook_endpoint_id = %s", (endpoint,)
        ).fetchone() == (2,)
        # Nothing is to be delivered to this endpoint by another test's workers.
        db.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = %s", (endpoint,))
        db.execute(
            "UPDATE webhook_deliveries SET status = 'cancelled', finished_at = now()"
            " WHERE endpoint_id = %s",
            (endpoint,),
        )

        assert browser.post("/dashboard/logout").status_code == 303


def test_a_broker_that_fails_after_an_action_committed_leaves_the_change_and_says_so(
    own_broker: tuple[Settings, SettleBroker, Callable[[], None]],
    pool: ConnectionPool,
    db: psycopg.Connection,
) -> None:
    """The broker answers the check, then fails (here: the check asks the suite's broker,
    the sends and dead letters go to the test's own, stopped). The change has committed, so
    the answer is the action's own, with a notice of what the broker left undone: retried
    transfers are plain pending (the sweeper sends them), a cancel stands."""
    from web.dashboard.actions import BROKER_FAILED, DEAD_LETTERS_LEFT
    from worker.actors import settle_transfer

    settings, broker, stop_broker = own_broker
    live = settle_transfer.broker  # the broker conftest installed
    assert isinstance(live, SettleBroker)
    with _client(settings, pool, ping=live, sending=broker, queues=broker) as client:
        key = auth.create_key(db, user_id=None, label="outage").key
        bearer = {"Authorization": f"Bearer {key}"}
        browser = Browser(client, key)
        tag = uuid.uuid4().hex
        retried, retried_api, cancelled, cancelled_api, bulk = (
            dead_lettered(db, error=f"outage {tag}") for _ in range(5)
        )
        stop_broker()

        page = browser.post(f"/dashboard/transfers/{retried}/retry")
        assert page.status_code == 200 and BROKER_FAILED in html.unescape(page.text)
        answer = client.simulate_post(
            f"/dashboard/api/transfers/{retried_api}/retry", headers=bearer
        )
        assert answer.status_code == 200
        assert answer.json["data"] == {"id": retried_api, "retried": True, "notice": BROKER_FAILED}

        page = browser.post(f"/dashboard/transfers/{cancelled}/cancel")
        assert page.status_code == 200 and DEAD_LETTERS_LEFT in html.unescape(page.text)
        answer = client.simulate_post(
            f"/dashboard/api/transfers/{cancelled_api}/cancel", headers=bearer
        )
        assert answer.status_code == 200
        assert answer.json["data"] == {
            "id": cancelled_api,
            "cancelled": True,
            "notice": DEAD_LETTERS_LEFT,
        }

        answer = client.simulate_post(
            "/dashboard/api/transfers/retry", json={"error": tag}, headers=bearer
        )
        assert answer.status_code == 200
        assert (answer.json["data"]["sent"], answer.json["data"]["notice"]) == (1, BROKER_FAILED)

        for transfer in (retried, retried_api, bulk):
            row = transfer_row(db, transfer)
            assert (row["status"], row["dead_lettered_at"]) == ("pending", None)
        for transfer in (cancelled, cancelled_api):
            row = transfer_row(db, transfer)
            assert (row["status"], row["failure_code"]) == ("failed", "cancelled_by_operator")
