"""The dramatiq internals Settle relies on (shared/broker/redis_broker.py's maintenance switch
for its heartbeat, and its reading of the dead-letter layout), held to account against the real
Redis by what they do: an upgrade of dramatiq that changes them fails here.
(tests/integration/test_adapters.py pins the release itself.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import pytest
import redis

from shared.broker.redis_broker import _BEAT, SettleRedisBroker
from shared.config import Settings
from tests.helpers import wait_until

QUEUE = "adapter-check"


@pytest.fixture
def namespace(settings: Settings) -> Iterator[str]:
    name = f"{settings.broker_namespace}-adapter-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def quiet_broker(settings: Settings, namespace: str) -> SettleRedisBroker:
    """A broker that never runs maintenance on its own (chance 0), with a 100 ms heartbeat
    timeout: maintenance happens only when `beat()` forces it."""
    broker = SettleRedisBroker(
        url=settings.redis_url, namespace=namespace, heartbeat_timeout=100, maintenance_chance=0
    )
    broker.declare_queue(QUEUE)
    return broker


def message(n: int) -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name="check", args=(n,), kwargs={}, options={})


def test_a_beat_forces_maintenance_which_requeues_a_dead_consumers_messages(
    settings: Settings, namespace: str
) -> None:
    dead = quiet_broker(settings, namespace)
    dead.enqueue(message(1))
    consumer = dead.consume(QUEUE, prefetch=1, timeout=1000)
    fetched = next(consumer)
    assert fetched is not None and fetched.args == (1,)
    # `dead` now goes silent, holding the message unacked.

    alive = quiet_broker(settings, namespace)
    other = alive.consume(QUEUE, prefetch=1, timeout=100)
    assert next(other) is None  # nothing to fetch: without maintenance it stays held

    def redelivered() -> bool:
        alive.beat()  # dramatiq consults _should_do_maintenance("heartbeat") for this command
        got = next(other)
        return got is not None and got.args == (1,)

    wait_until(redelivered, timeout=10, what="a beat requeues the silent consumer's message")
    assert alive._should_do_maintenance(_BEAT) == 1
    other.close()
    consumer.close()
    for broker in (dead, alive):
        broker.client.connection_pool.disconnect()  # RedisBroker.close leaves them open


def test_the_dead_letter_queue_is_read_and_emptied_through_its_redis_layout(
    settings: Settings, namespace: str
) -> None:
    broker = quiet_broker(settings, namespace)
    broker.enqueue(message(7))
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    fetched = next(consumer)
    assert fetched is not None
    consumer.nack(fetched)  # dramatiq's own path to the dead-letter queue

    letters = broker.dead_letters(QUEUE)
    assert list(letters) == [7]  # the message's first argument
    assert broker.depths(QUEUE)["dead"] == 1
    broker.discard_dead_letters(letters[7], QUEUE)
    assert broker.dead_letters(QUEUE) == {}
    consumer.close()
    broker.client.connection_pool.disconnect()
