"""The dramatiq broker, built from the settings by `create_broker`: nothing here runs at
import. Making it the process's broker (dramatiq's one global) is `worker.actors.install`'s
job, called by each composition root.

The middleware list is explicit. TimeLimit is left out on purpose: it injects an exception
into the actor's thread, and one landing during COMMIT would leave the outcome unknown;
Postgres timeouts (statement, lock, idle-in-transaction) bound the transfer work instead.

`BROKER_URL` (default: `REDIS_URL`) picks dramatiq's Redis broker or, for `amqp://`, its
RabbitMQ broker (`worker.rabbitmq`); the middleware is the same on both.

Recovery from a killed worker on Redis: every worker process beats every
`HEARTBEAT_INTERVAL` seconds and runs the broker's maintenance on each beat (see
`worker.middleware`), so the messages a dead worker had fetched are back on their queue
about `HEARTBEAT_TIMEOUT_MS` after its last beat. Taking a live but silent worker for dead
costs only a redelivery, which the idempotent actor ignores. On RabbitMQ the server puts a
dead consumer's messages back when its connection closes; the beat does nothing there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import dramatiq
import redis
from dramatiq import Message
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import AgeLimit, Retries

from shared.db.pool import TRANSIENT
from shared.errors import Unavailable
from shared.runtime.settings import Settings
from worker.metrics import Telemetry
from worker.middleware import DeadLetterMarks, Heartbeat
from worker.pool import LendConnections
from worker.queues import broker_operations
from worker.rabbitmq import create_rabbitmq_broker

#: The settle actors' names (worker.actors declares them; the middleware needs them first):
#: one id per message (as sent before batches), and a batch of ids per message.
SETTLE_ACTOR = "settle_transfer"
SETTLE_BATCH_ACTOR = "settle_transfers"

#: A worker process whose last heartbeat is older than this is taken for dead and the
#: messages it had fetched are requeued. Five beats: a live worker is never that late unless
#: Redis itself stalls.
HEARTBEAT_TIMEOUT_MS = 5_000
HEARTBEAT_INTERVAL = 1.0

#: The dramatiq release whose Redis broker internals `SettleRedisBroker` was checked against.
DRAMATIQ_CHECKED_VERSION = "2.2.1"

#: Longest pause of a busy worker's consumer between two polls of its queue (dramatiq's
#: back-off, capped): under load it polls, and each poll takes what came meanwhile at once.
POLL_MS = 10

#: Empty polls in a row after which a consumer counts as idle and waits to be woken instead
#: (about 100 ms without a message).
IDLE_AFTER_MISSES = 12

#: Wake-up tokens kept at most per queue: enough to wake every idle consumer of a burst.
WAKE_TOKENS = 16

#: The broker command a heartbeat sends: dramatiq's dispatch script records the heartbeat of
#: every command, runs maintenance when asked, and does nothing else for an unknown one.
_BEAT = "heartbeat"


def wake_key(namespace: str, queue_name: str) -> str:
    """The Redis list of wake-up tokens of `queue_name`'s idle consumers."""
    return f"{namespace}:{queue_name}.wake"


class _WakingConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, except where its queue is empty. Busy (fewer than
    `IDLE_AFTER_MISSES` empty polls in a row), it sleeps its back-off capped at `POLL_MS`,
    then polls again. Idle, instead of sleeping its back-off (up to the worker timeout, 1 s)
    it waits as long on the queue's wake-up list (BLPOP), which every enqueue pushes a token
    to, so a message sent to an idle worker is fetched at once and an idle worker costs
    nothing. A token pushed while no consumer waits stays for the next wait (no lost
    wake-up); a spare one costs one empty fetch. While it holds all it may prefetch it
    cannot take more, so it polls rather than take a token another consumer could use.
    (Waking on every message also while busy cost more in the tail than it saved: at 300
    transfers/s accepted -> settled p99 was 1.15x polling's, median of 4 alternated rounds.)
    `__next__` is dramatiq's own otherwise."""

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                try:
                    data = self.message_cache.pop(0)
                    if data is None:  # dramatiq warns of this (its issue #266) and skips it
                        self.logger.warning("Found 'None' message in message cache")
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                except IndexError:
                    messages = []
                    room = self.prefetch - self.outstanding_message_count
                    if room > 0:
                        self.message_cache = messages = self.broker.do_fetch(self.queue_name, room)
                    if not messages:
                        self.misses, backoff_ms = compute_backoff(
                            self.misses, max_backoff=self.timeout
                        )
                        if room > 0 and self.misses > IDLE_AFTER_MISSES:
                            self.broker.client.blpop(
                                [wake_key(self.broker.namespace, self.queue_name)],
                                timeout=max(backoff_ms, 1) / 1000,
                            )
                        else:
                            time.sleep(min(backoff_ms, POLL_MS) / 1000)
                        return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None


class SettleRedisBroker(RedisBroker):
    """dramatiq's Redis broker, plus `beat()`: a heartbeat that always runs maintenance;
    `enqueue_many`: several messages in one round trip; and consumers woken by each enqueue
    rather than polling (`_WakingConsumer`).

    It leans on dramatiq's internals (`_should_do_maintenance`, the dispatch script's
    arguments, `_max_unpack_size`, the Redis consumer's class and its `__next__`), checked
    against dramatiq `DRAMATIQ_CHECKED_VERSION`; tests/integration/test_adapters.py fails on
    another release.
    """

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        # Delay queues (retries) keep dramatiq's polling: nothing there is urgent to the ms,
        # and nothing wakes them.
        if queue_name.endswith(".DQ"):
            return super().consume(queue_name, prefetch, timeout)
        return _WakingConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        enqueued = super().enqueue(message, delay=delay)
        if delay is None:
            with self.client.pipeline(transaction=False) as pipe:
                self._wake(pipe, message.queue_name, 1)
                pipe.execute()
        return enqueued

    def _wake(self, pipe: Any, queue_name: str, count: int) -> None:
        key = wake_key(self.namespace, queue_name)
        pipe.lpush(key, *[b"1"] * min(count, WAKE_TOKENS))
        pipe.ltrim(key, 0, WAKE_TOKENS - 1)

    def enqueue_many(self, messages: Sequence[Message]) -> list[Message]:
        """Enqueue `messages` (none delayed) in one pipeline: one round trip for all of them
        (plus redis-py's check that the script is loaded), where `enqueue` costs one each.
        Raises redis errors; then some messages may have been enqueued."""
        prepared = [m.copy(options={"redis_message_id": str(uuid4())}) for m in messages]
        for message in prepared:
            self.emit_before("enqueue", message, None)
        dispatch = self.scripts["dispatch"]
        with self.client.pipeline(transaction=False) as pipe:
            for message in prepared:
                # The arguments of dramatiq's `_dispatch("enqueue")`, in its order.
                args = [
                    "enqueue",
                    current_millis(),
                    message.queue_name,
                    self.broker_id,
                    self.heartbeat_timeout,
                    self.dead_message_ttl,
                    self._should_do_maintenance("enqueue"),
                    self._max_unpack_size(),
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                dispatch(keys=[self.namespace], args=args, client=pipe)
            for queue_name in {m.queue_name for m in prepared}:
                self._wake(pipe, queue_name, sum(m.queue_name == queue_name for m in prepared))
            pipe.execute()
        for message in prepared:
            self.emit_after("enqueue", message, None)
        return prepared

    def _should_do_maintenance(self, command: str) -> int:
        # dramatiq 2.2 decides per command; other commands keep its random chance.
        if command == _BEAT:
            return 1
        return int(super()._should_do_maintenance(command))

    def beat(self) -> None:
        """Refresh this broker's heartbeat and requeue the fetched-but-unacked messages of
        workers whose heartbeat has expired, on every declared queue and delay queue.
        Raises redis errors."""
        queues = self.get_declared_queues() | self.get_declared_delay_queues()
        for queue in sorted(queues):
            self.do_heartbeat(queue)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy, unreachable or chose a victim (the
    actor raises those as `dramatiq.Retry`)."""
    return isinstance(exc, (*TRANSIENT, Unavailable, dramatiq.Retry))


def create_broker(settings: Settings) -> tuple[dramatiq.Broker, LendConnections]:
    """The broker `settings.message_broker_url` names (Redis, or RabbitMQ for `amqp://`)
    with retries for transient errors only, the middleware that owns each worker process's
    pool, the heartbeat, and the dead-letter mark. Connects lazily."""
    max_retries = settings.transfer_max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        # `retries` counts the retries already made: TRANSFER_MAX_RETRIES=N allows N of them.
        return retries < max_retries and is_transient(exc)

    database = LendConnections(settings)
    middleware = [
        # First: its after-hook runs last, once Retries has marked a message failed.
        Telemetry(database, {SETTLE_ACTOR, SETTLE_BATCH_ACTOR}),
        AgeLimit(),
        # Before Retries: after-hooks run in reverse, and Retries decides "failed".
        DeadLetterMarks(database, {SETTLE_ACTOR, SETTLE_BATCH_ACTOR}),
        Retries(
            max_retries=max_retries,
            min_backoff=settings.transfer_min_backoff_ms,
            max_backoff=settings.transfer_max_backoff_ms,
            retry_when=retry_when,
        ),
        database,
    ]
    broker: dramatiq.Broker
    if settings.broker == "rabbitmq":
        broker = create_rabbitmq_broker(settings.message_broker_url, middleware)
    else:
        client = redis.Redis.from_url(
            settings.message_broker_url,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
        broker = SettleRedisBroker(
            client=client,
            namespace=settings.broker_namespace,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
            middleware=middleware,
        )
    broker.add_middleware(Heartbeat(broker_operations(broker).beat, interval=HEARTBEAT_INTERVAL))
    return broker, database
