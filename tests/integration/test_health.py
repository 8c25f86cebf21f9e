"""GET /healthz (liveness) and GET /readyz (Postgres and the broker answer; on RabbitMQ
see tests/integration/test_broker_operations.py)."""

from __future__ import annotations

from collections.abc import Iterator

import falcon.testing
import pytest
import redis
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.pool import create_pool
from web.app import create_app

#: Nothing listens on TCP port 1 here: connecting is refused at once.
NOWHERE = "redis://127.0.0.1:1/0"


def no_enqueue(transfer_id: int) -> None:
    raise AssertionError("a health check must not enqueue anything")


@pytest.fixture
def unreachable_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(NOWHERE, socket_connect_timeout=1)
    yield client
    client.close()


@pytest.fixture
def closed_pool(settings: Settings) -> Iterator[ConnectionPool]:
    """A pool this process never opened, as before boot or after shutdown."""
    pool = create_pool(settings, "web-test", size=1)
    yield pool
    pool.close()


def test_healthz_answers_200_ok(client: TestClient) -> None:
    resp = client.simulate_get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"data": {"status": "ok"}}


def test_readyz_answers_200_when_postgres_and_the_broker_answer(
    client: TestClient, settings: Settings
) -> None:
    resp = client.simulate_get("/readyz")
    assert resp.status_code == 200
    assert resp.json == {"data": {"status": "ready", "postgres": "ok", settings.broker: "ok"}}


def test_readyz_answers_503_with_retry_after_when_redis_is_unreachable(
    settings: Settings, pool: ConnectionPool, unreachable_redis: redis.Redis
) -> None:
    on_redis = settings.with_(broker_url=NOWHERE)
    app = create_app(on_redis, pool=pool, enqueue=no_enqueue, ping_broker=unreachable_redis.ping)
    resp = falcon.testing.TestClient(app).simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json["error"]["code"] == "not_ready"
    assert resp.json["error"]["message"].startswith("postgres ok; redis unavailable: ")


def test_readyz_answers_503_when_the_process_has_no_open_pool(
    settings: Settings, closed_pool: ConnectionPool
) -> None:
    from worker.actors import settle_transfer

    broker = settle_transfer.broker  # the broker conftest installed

    ping = broker.ping
    app = create_app(settings, pool=closed_pool, enqueue=no_enqueue, ping_broker=ping)
    resp = falcon.testing.TestClient(app).simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.json["error"]["code"] == "not_ready"
    assert resp.json["error"]["message"].startswith("postgres unavailable: ")
    assert resp.json["error"]["message"].endswith(f"; {settings.broker} ok")


def test_healthz_answers_200_even_when_postgres_and_redis_are_out_of_reach(
    settings: Settings, closed_pool: ConnectionPool, unreachable_redis: redis.Redis
) -> None:
    app = create_app(
        settings, pool=closed_pool, enqueue=no_enqueue, ping_broker=unreachable_redis.ping
    )
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/readyz").status_code == 503
    resp = client.simulate_get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"data": {"status": "ok"}}
