"""The broker operations (shared.broker.base.SettleBroker) on each real broker: queue depths,
dead letters listed and discarded, ping, and readiness; and each one's failure when its
broker cannot be reached."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import falcon.testing
import pytest
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.broker.messages import TRANSFER_QUEUE
from shared.broker.redis_broker import SettleRedisBroker
from shared.config import Settings
from shared.config.brokers import broker_name
from shared.errors import BrokerUnavailable
from tests.helpers import wait_until
from tests.scratch import settle
from web.app import create_app
from worker.actors import create_broker, settle_transfer

#: Nothing listens on TCP port 1 here: connecting is refused at once.
NOWHERE = {"redis": "redis://127.0.0.1:1/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:1/"}


@pytest.fixture
def broker(settings: Settings, broker_url: str) -> Iterator[SettleBroker]:
    """A broker of the test's own namespace (Redis) or vhost (RabbitMQ), with the settle actor."""
    built, _ = create_broker(
        settings.with_(broker_url=broker_url, broker_namespace=f"ops-{uuid.uuid4().hex[:8]}")
    )
    built.declare_actor(settle_transfer)
    yield built
    built.flush_all()
    if isinstance(built, SettleRedisBroker):
        keys = list(built.client.scan_iter(match=f"{built.namespace}*", count=1000))
        if keys:
            built.client.delete(*keys)
    built.close()


def waiting(depths: dict[str, int]) -> tuple[int, int, int]:
    """(ready, delayed, dead): the states both brokers tell."""
    return depths["ready"], depths["delayed"], depths["dead"]


def kill_one(broker: SettleBroker) -> int:
    """Take one message off the transfers queue and reject it, as dramatiq does with a
    message that failed for good: the broker moves it to the dead-letter queue. Returns its
    transfer id."""
    consumer = broker.consume(TRANSFER_QUEUE, prefetch=1, timeout=100)
    try:
        message = wait_until(lambda: next(consumer), timeout=10, what="a message is consumed")
        consumer.nack(message)
    finally:
        consumer.close()  # on RabbitMQ, waits until the reject has been sent
    return int(message.args[0])


def test_depths_count_ready_delayed_and_dead_messages_and_dead_letters_can_be_dropped(
    broker: SettleBroker,
) -> None:
    assert waiting(broker.depths()) == (0, 0, 0)

    for transfer in (101, 102, 103):
        broker.enqueue(settle_transfer.message(transfer))
    broker.enqueue(settle_transfer.message(104), delay=60_000)
    assert waiting(broker.depths()) == (3, 1, 0)

    dead = kill_one(broker)
    again = kill_one(broker)
    assert dead == 101 and again == 102  # first in, first out
    assert wait_until(
        lambda: waiting(broker.depths()) == (1, 1, 2),
        timeout=10,
        what="two messages are dead-lettered",
    )
    listed = broker.dead_letters()
    assert sorted(listed) == [101, 102]
    assert broker.dead_letters() == listed  # listing takes nothing away

    broker.discard_dead_letters(listed[101])
    assert list(broker.dead_letters()) == [102]
    assert waiting(broker.depths()) == (1, 1, 1)
    broker.discard_dead_letters(["not-a-message-id"])  # unknown ids are ignored
    assert broker.depths()["dead"] == 1
    # A message is kept while one of its transfers is dead-lettered (in Postgres: here, the
    # function says), and dropped once none is.
    assert broker.drop_cleared_dead_letters(lambda ids: {tid for tid in ids if tid == 102}) == 0
    assert list(broker.dead_letters()) == [102]
    assert broker.drop_cleared_dead_letters(lambda ids: set()) == 1
    assert broker.dead_letters() == {}


def test_ping_passes_on_a_broker_that_answers_and_readyz_reports_it_by_name(
    broker: SettleBroker, settings: Settings, broker_url: str, pool: ConnectionPool
) -> None:
    broker.ping()
    on_this_broker = settings.with_(broker_url=broker_url)
    app = create_app(on_this_broker, pool=pool, enqueue=lambda _: None, ping_broker=broker.ping)
    resp = falcon.testing.TestClient(app).simulate_get("/readyz")
    assert resp.status_code == 200
    assert resp.json == {"data": {"status": "ready", "postgres": "ok", broker.name: "ok"}}


@pytest.mark.parametrize("name", ["redis", "rabbitmq"])
def test_every_operation_raises_broker_unavailable_when_the_broker_cannot_be_reached(
    settings: Settings, pool: ConnectionPool, name: str
) -> None:
    unreachable = settings.with_(broker_url=NOWHERE[name])
    built, _ = create_broker(unreachable)
    assert built.name == name
    for operation in (built.ping, built.depths, built.dead_letters):
        with pytest.raises(BrokerUnavailable):
            operation()
    with pytest.raises(BrokerUnavailable):
        built.discard_dead_letters(["x"])
    with pytest.raises(BrokerUnavailable):
        built.drop_cleared_dead_letters(lambda ids: set())
    with pytest.raises(BrokerUnavailable):
        built.send_batches([1, 2])
    if name == "redis":  # RabbitMQ needs no beat of Settle's
        built.declare_queue(TRANSFER_QUEUE)  # a beat visits the declared queues
        with pytest.raises(BrokerUnavailable):
            built.beat()
    app = create_app(unreachable, pool=pool, enqueue=lambda _: None, ping_broker=built.ping)
    resp = falcon.testing.TestClient(app).simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.json["error"]["message"].startswith(f"postgres ok; {name} unavailable: ")


def test_settle_status_counts_the_queues_of_the_broker_in_use(
    broker: SettleBroker, settings: Settings, broker_url: str
) -> None:
    for transfer in (201, 202):
        broker.enqueue(settle_transfer.message(transfer))
    env = {
        **os.environ,
        "BROKER_URL": broker_url,
        "BROKER_NAMESPACE": getattr(broker, "namespace", settings.broker_namespace),
    }
    done = settle("status", env=env)
    assert done.returncode in (0, 1), done.stdout  # 1: something in the suite needs attention
    line = next(x for x in done.stdout.splitlines() if x.startswith("queue transfers (messages):"))
    if broker_name(broker_url) == "redis":
        assert line == "queue transfers (messages): 2 ready, 0 in flight, 0 delayed, 0 dead"
    else:  # AMQP cannot tell what consumers hold unacknowledged
        assert line == "queue transfers (messages): 2 ready, 0 delayed, 0 dead"
