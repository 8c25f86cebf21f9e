"""An idle worker's consumer waits on its queue's wake-up list, so a message sent to it is
fetched when it is sent, not when the consumer's back-off runs out (real Redis)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from shared.broker.redis_broker import WAKE_TOKENS, SettleRedisBroker, wake_key
from shared.config import Settings
from worker.actors import create_broker, settle_transfer

#: A back-off no test waits out: a consumer that returns was woken.
HOURS_MS = 3 * 3600 * 1000


@pytest.fixture
def broker(settings: Settings) -> Iterator[SettleRedisBroker]:
    namespace = f"settle-test-wake-{uuid.uuid4().hex[:8]}"
    broker, _ = create_broker(settings.with_(broker_namespace=namespace))
    broker.declare_queue("transfers")
    try:
        yield broker
    finally:
        keys = list(broker.client.scan_iter(match=f"{namespace}*"))
        if keys:
            broker.client.delete(*keys)
        broker.close()


def test_an_idle_consumer_is_woken_by_a_send_and_fetches_it(broker: SettleRedisBroker) -> None:
    consumer = broker.consume("transfers", prefetch=4, timeout=HOURS_MS)
    consumer.misses = 40  # long idle: its next empty poll would wait out the whole timeout
    returned = threading.Event()

    def wait() -> None:
        assert next(consumer) is None  # the queue is empty: it waits, then yields nothing
        returned.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    assert not returned.wait(0.2)  # still waiting (nothing sent yet)
    broker.send_batches([7, 8, 9])
    waiter.join(timeout=60)
    assert returned.is_set(), "the send did not wake the waiting consumer"
    message = next(consumer)
    assert message is not None and message.args == ([7, 8, 9],)
    consumer.ack(message)
    consumer.close()


def test_a_wake_up_sent_while_no_consumer_waits_is_kept_and_bounded(
    broker: SettleRedisBroker,
) -> None:
    key = wake_key(broker.namespace, "transfers")
    broker.enqueue(settle_transfer.message(1))
    assert broker.client.llen(key) == 1
    broker.send_batches(list(range(100, 100 + 50 * 100)))  # 50 messages
    assert broker.client.llen(key) == WAKE_TOKENS
    # A delayed message (a retry) is not due yet: no wake-up for it.
    broker.client.delete(key)
    broker.enqueue(settle_transfer.message(2), delay=60_000)
    assert broker.client.llen(key) == 0
