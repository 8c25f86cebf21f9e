"""Test servers and fixtures: the real Postgres, the real Redis and the real RabbitMQ, never
mocks.

With SETTLE_TEST_DATABASE_URL / SETTLE_TEST_REDIS_URL set, the suite uses those servers;
otherwise it starts embedded ones under .settle/test-servers. Either way it works in a fresh
database of its own (dropped at the end) and a broker namespace of its own, and sets
DATABASE_URL / REDIS_URL / BROKER_URL / BROKER_NAMESPACE, then installs the broker for
them (`worker.actors.install`) before any test module imports the actor.

RabbitMQ: SETTLE_TEST_RABBITMQ_URL (`amqp://guest:guest@127.0.0.1:5672/`, a node of this
machine: vhosts are made with `rabbitmqctl`) runs the tests that take `broker_url` on
RabbitMQ too, each in a vhost of its own; unset, those cases are skipped. With
SETTLE_TEST_BROKER=rabbitmq as well, the suite's own broker (BROKER_URL) is a RabbitMQ vhost
of the session's, and no Redis is started or needed unless SETTLE_TEST_REDIS_URL is set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger.audit import find_violations
from shared.runtime.embedded import Embedded, start_embedded
from shared.testing.scratch import scratch_database, scratch_vhost
from tests.pgbouncer import PgBouncer, running_pgbouncer

ROOT = Path(__file__).resolve().parent.parent
_state: dict[str, object] = {}


#: The brokers a test taking `broker_url` runs on, one case each.
BROKERS = ("redis", "rabbitmq")


def pytest_configure(config: pytest.Config) -> None:
    admin_url = os.environ.get("SETTLE_TEST_DATABASE_URL")
    redis_url = os.environ.get("SETTLE_TEST_REDIS_URL")
    rabbitmq_url = os.environ.get("SETTLE_TEST_RABBITMQ_URL")
    on_rabbitmq = os.environ.get("SETTLE_TEST_BROKER", "redis") == "rabbitmq"
    if on_rabbitmq and not rabbitmq_url:
        raise pytest.UsageError("SETTLE_TEST_BROKER=rabbitmq needs SETTLE_TEST_RABBITMQ_URL")
    embedded = start_embedded(
        ROOT / ".settle" / "test-servers",
        postgres=not admin_url,
        redis=not redis_url and not on_rabbitmq,
    )
    admin_url = admin_url or embedded.database_url
    redis_url = redis_url or embedded.redis_url
    assert admin_url
    servers = contextlib.ExitStack()
    database_url = servers.enter_context(scratch_database(admin_url, prefix="settle_test"))
    os.environ.update(
        DATABASE_URL=database_url,
        BROKER_NAMESPACE=f"settle-test-{uuid.uuid4().hex[:10]}",
        # The session's tests share one database and leave pending transfers behind on
        # purpose, which would soon hold every POST /transfers off as settlement's backlog:
        # admission control is off here, and its own tests turn it on, each on a database
        # of its own (tests/integration/test_admission.py).
        TRANSFER_BACKLOG_MAX_MS="0",
        # Webhook secrets are derived from it; receivers in tests listen on 127.0.0.1.
        SECRET_KEY=secrets.token_urlsafe(32),
        WEBHOOK_ALLOW_PRIVATE="1",
    )
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    if on_rabbitmq:
        assert rabbitmq_url
        os.environ["BROKER_URL"] = servers.enter_context(
            scratch_vhost(rabbitmq_url, prefix="settle-test")
        )
    else:
        os.environ.pop("BROKER_URL", None)
    _state.update(
        embedded=embedded, servers=servers, redis_url=redis_url, rabbitmq_url=rabbitmq_url
    )
    # The suite's composition root: the broker the tests send to and consume from.
    from worker import actors

    actors.install(Settings.from_env())


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _state:
        return
    import dramatiq

    dramatiq.get_broker().close()  # RabbitMQ: the connections its threads opened
    if _state["redis_url"]:
        namespace = os.environ["BROKER_NAMESPACE"]
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    servers = _state["servers"]
    assert isinstance(servers, contextlib.ExitStack)
    servers.close()  # the database, and the session's vhost if any
    embedded = _state["embedded"]
    assert isinstance(embedded, Embedded)
    embedded.stop()


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the test servers, as the processes under test would read them."""
    return Settings.from_env().with_(web_processes=1, worker_processes=1, worker_threads=2)


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each broker in turn: the suite's Redis (the test isolates itself by namespace, as
    before), then a RabbitMQ vhost of the test's own, deleted afterwards. A case whose
    server is not configured (SETTLE_TEST_RABBITMQ_URL, or Redis on a RabbitMQ-only run)
    is skipped."""
    if request.param == "redis":
        url = _state["redis_url"]
        if not url:
            pytest.skip("no Redis on this run (SETTLE_TEST_BROKER=rabbitmq without a Redis URL)")
        assert isinstance(url, str)
        yield url
        return
    url = _state["rabbitmq_url"]
    if not url:
        pytest.skip("SETTLE_TEST_RABBITMQ_URL is unset")
    assert isinstance(url, str)
    with scratch_vhost(url, prefix="settle-test") as vhost_url:
        yield vhost_url


@pytest.fixture
def own_broker_url(settings: Settings) -> Iterator[str]:
    """The suite's broker, for a test that builds a broker of its own: on Redis the same URL
    (the test gives itself a namespace), on RabbitMQ a vhost of the test's own, since queue
    names there carry no namespace."""
    if settings.broker == "redis":
        yield settings.message_broker_url
        return
    url = _state["rabbitmq_url"]
    assert isinstance(url, str)
    with scratch_vhost(url, prefix="settle-test") as vhost_url:
        yield vhost_url


@pytest.fixture(scope="session")
def pgbouncer(settings: Settings) -> Iterator[PgBouncer]:
    """A real PgBouncer (Debian's) in transaction mode in front of the test server."""
    with running_pgbouncer(settings.database_url) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def database_name(settings: Settings) -> str:
    return str(conninfo_to_dict(settings.database_url)["dbname"])


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def pool(settings: Settings) -> Iterator[ConnectionPool]:
    """A web-sized pool on the test database, opened once for the session."""
    from tests.helpers import opened_pool

    with opened_pool(settings, "web-test", size=settings.web_threads) as pool:
        yield pool


@pytest.fixture(autouse=True)
def ledger_invariants(settings: Settings) -> Iterator[None]:
    """After every test: per currency balances sum to zero, each balance equals its entries,
    settled transfers have one debit and one credit, failed and pending ones none."""
    yield
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        violations = find_violations(conn)
    assert violations == [], "ledger invariants broken:\n" + "\n".join(violations)


@pytest.fixture(scope="session")
def sent() -> list[int]:
    """Transfer ids the test app handed to its broker, in order (shared by the session)."""
    return []


@pytest.fixture(scope="session")
def operator_key(settings: Settings) -> str:
    """An operator API key in the test database, shared by the session."""
    from shared.ledger import auth

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return auth.create_key(conn, user_id=None, label="tests").key


@pytest.fixture
def client(
    settings: Settings, pool: ConnectionPool, sent: list[int], operator_key: str
) -> Iterator[falcon.testing.TestClient]:
    """The real app on the real database, called with an operator key unless a request sets
    its own Authorization header; `enqueue` sends to the real broker (Redis, or RabbitMQ with
    SETTLE_TEST_BROKER=rabbitmq) and records the id in `sent`. Every answer is held to the
    OpenAPI document: one that breaks it fails the test at teardown (see tests/contract.py)."""
    from shared.broker.sending import sender
    from tests.contract import held_to_document
    from web.app import create_app
    from worker.actors import settle_transfer

    broker = settle_transfer.broker
    send = sender(broker)

    def enqueue(transfer_id: int) -> None:
        send(transfer_id)
        sent.append(transfer_id)

    app = create_app(settings, pool=pool, enqueue=enqueue, ping_broker=broker.ping)
    with held_to_document(app) as recorder:
        yield falcon.testing.TestClient(
            recorder, headers={"Authorization": f"Bearer {operator_key}"}
        )
