"""Sending on Redis runs dramatiq's dispatch script by its SHA (EVALSHA), which needs the
script in Redis's script cache; a restart or SCRIPT FLUSH empties it. A send then loads the
script and queues each message exactly once, and no send asks Redis first whether the
script is loaded (SCRIPT EXISTS: a round trip on every send). On a Redis of the test's own
(a Valkey server): flushing the script cache is felt by every client of a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.broker.messages import TRANSFER_QUEUE, transfer_ids
from shared.broker.redis_broker import SettleRedisBroker
from shared.config import Settings
from tests.faults.servers import DedicatedRedis
from worker.actors import create_broker, settle_transfer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[DedicatedRedis]:
    server = DedicatedRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def broker(settings: Settings, own_redis: DedicatedRedis) -> Iterator[SettleRedisBroker]:
    built, _ = create_broker(settings.with_(broker_url=own_redis.url, broker_namespace="scripts"))
    assert isinstance(built, SettleRedisBroker)
    built.declare_actor(settle_transfer)
    try:
        yield built
    finally:
        built.close()


def calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran `command` (e.g. "script|exists") since it started."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def queued(broker: SettleRedisBroker) -> list[list[int]]:
    """The transfer ids of each message waiting on the transfers queue, taken off it."""
    consumer = broker.consume(TRANSFER_QUEUE, prefetch=1000, timeout=100)
    found = []
    try:
        for _ in range(1000):
            message = next(consumer)
            if message is None:
                break
            found.append(transfer_ids(message))
            consumer.ack(message)
    finally:
        consumer.close()
    return sorted(found)


def test_a_send_after_script_flush_loads_the_script_and_queues_each_message_once(
    broker: SettleRedisBroker,
) -> None:
    client = broker.client
    sha = broker.scripts["dispatch"].sha
    assert broker.send_batches([1, 2, 3], size=2) == 2  # a new server: the cache is empty
    assert client.script_exists(sha) == [True]
    assert queued(broker) == [[1, 2], [3]]

    client.script_flush()
    assert client.script_exists(sha) == [False]
    assert broker.send_batches(list(range(10, 20)), size=3) == 4
    assert client.script_exists(sha) == [True]
    assert broker.depths()["ready"] == 4
    assert queued(broker) == [[10, 11, 12], [13, 14, 15], [16, 17, 18], [19]]

    # And a single enqueue (dramatiq's own path, used for retries) after another flush.
    client.script_flush()
    broker.enqueue(settle_transfer.message(30))
    assert queued(broker) == [[30]]


def test_a_send_after_a_restart_of_redis_goes_through_once(
    broker: SettleRedisBroker, own_redis: DedicatedRedis
) -> None:
    broker.send_batches([1])
    assert queued(broker) == [[1]]
    own_redis.stop()  # keeps nothing: the restarted server has no script cached
    own_redis.start()
    assert broker.client.script_exists(broker.scripts["dispatch"].sha) == [False]
    assert broker.send_batches([5, 6, 7], size=1) == 3
    assert queued(broker) == [[5], [6], [7]]


def test_sends_never_ask_redis_whether_the_script_is_loaded(
    broker: SettleRedisBroker,
) -> None:
    client = broker.client
    broker.send_batches([1])  # loads the script (the cache starts empty)
    exists_before = calls(client, "script|exists")
    evalsha_before = calls(client, "evalsha")
    for first in range(100, 110):
        broker.send_batches([first, first + 1])
    broker.send_deliveries([7, 8])
    assert calls(client, "script|exists") == exists_before
    assert calls(client, "evalsha") - evalsha_before == 12
