"""Settle on Redis: dramatiq's Redis broker as Settle builds it (`create`), with a heartbeat
that always runs maintenance, enqueues of many messages in one round trip, consumers woken
by each enqueue rather than polling, and queue depths and dead letters read from its keys.

Recovery from a killed worker: dramatiq's Redis broker only requeues the messages a dead
worker had fetched once the worker's heartbeat is `heartbeat_timeout` old, and only on a
maintenance pass, which by default runs at random on 0.1% of broker commands. A busy worker
may also go quiet (no broker command while its threads work), so a short timeout alone would
misjudge it. Here every worker process beats every `HEARTBEAT_INTERVAL` seconds and runs
maintenance on each beat (`SettleRedisBroker.beat`, called by `worker.middleware.Heartbeat`),
so the messages a dead worker had fetched are back on their queue about
`HEARTBEAT_TIMEOUT_MS` after its last beat. Taking a live but silent worker for dead costs
only a redelivery, which the idempotent actor ignores (docs/decisions/redis-heartbeat.md).

dramatiq's key layout (dramatiq 2.2's `brokers/redis/dispatch.lua`; pinned by
tests/integration/test_metrics.py and test_dramatiq_adapter.py, which count and move real
messages through it). For a queue `q` in namespace `ns`: `ns:q` is the list of message ids
not yet fetched, `ns:q.msgs` the hash of every message not yet acknowledged (fetched ones
included), `ns:q.DQ.msgs` the same for delayed messages (retries waiting for their backoff),
and the sorted set `ns:q.XQ` the dead letters (their bodies in the hash `ns:q.XQ.msgs`).
Counting is four O(1) commands in one round trip; dead letters are read by HSCAN in batches,
never the whole hash in one command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar
from uuid import uuid4

import redis
from dramatiq import Message
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.middleware import Middleware

from shared.broker.base import SettleBroker
from shared.broker.messages import TRANSFER_QUEUE, decode, transfer_ids

log = logging.getLogger(__name__)

#: A worker process whose last heartbeat is older than this is taken for dead and the
#: messages it had fetched are requeued. Five beats (`HEARTBEAT_INTERVAL`): a live worker is
#: never that late unless Redis itself stalls.
HEARTBEAT_TIMEOUT_MS = 5_000

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

#: Dead letters read per HSCAN round trip.
SCAN_BATCH = 500

#: Sends of one batch of messages at most: the first, and one after each NOSCRIPT answer
#: (after which the script is loaded). Two would do unless the cache is flushed again between
#: the load and the send.
NOSCRIPT_ATTEMPTS = 3

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
    Waking on every message also while busy cost more in the tail than it saved
    (docs/decisions/waking-idle-consumers.md). `__next__` is dramatiq's own otherwise."""

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


class SettleRedisBroker(SettleBroker, RedisBroker):
    """dramatiq's Redis broker, plus `beat()`: a heartbeat that always runs maintenance;
    `enqueue_many`: several messages in one round trip; consumers woken by each enqueue
    rather than polling (`_WakingConsumer`); and Settle's operations on its keys.

    It leans on dramatiq's internals (`_should_do_maintenance`, the dispatch script's
    arguments, `_max_unpack_size`, the Redis consumer's class and its `__next__`, the key
    layout), checked against dramatiq `DRAMATIQ_CHECKED_VERSION`;
    tests/integration/test_adapters.py fails on another release.
    """

    name: ClassVar[str] = "redis"
    client_errors: ClassVar[tuple[type[BaseException], ...]] = (redis.RedisError, OSError)

    def close(self) -> None:
        # dramatiq's close leaves the client's connections open.
        super().close()
        self.client.close()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        # Delay queues (retries) keep dramatiq's polling: nothing there is urgent to the ms,
        # and nothing wakes them.
        if queue_name.endswith(".DQ"):
            return super().consume(queue_name, prefetch, timeout)
        return _WakingConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
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

    def enqueue_many(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Enqueue `messages` (none delayed) in one pipeline: one round trip for all of them,
        where `enqueue` costs one each. Raises redis errors; then some messages may have been
        enqueued.

        Each message is an EVALSHA of dramatiq's dispatch script sent as it is: a pipeline
        given a registered `Script` would first ask Redis whether the script is loaded
        (SCRIPT EXISTS, one more round trip on every send). When Redis answers NOSCRIPT (its
        script cache is empty after a restart or a SCRIPT FLUSH), the script is loaded and
        only the messages that met NOSCRIPT are sent again, so none is enqueued twice."""
        prepared = [m.copy(options={"redis_message_id": str(uuid4())}) for m in messages]
        for message in prepared:
            self.emit_before("enqueue", message, None)
        pending = prepared
        for _ in range(NOSCRIPT_ATTEMPTS):
            pending = self._dispatch_enqueues(pending)
            if not pending:
                break
            dispatch = self.scripts["dispatch"]
            dispatch.sha = self.client.script_load(dispatch.script)
        else:
            raise redis.exceptions.NoScriptError(
                f"dispatch script not found after loading it {NOSCRIPT_ATTEMPTS - 1} times"
            )
        for message in prepared:
            self.emit_after("enqueue", message, None)
        return prepared

    def _dispatch_enqueues(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Send `messages` in one pipeline with a wake-up for their consumers; returns those
        Redis refused with NOSCRIPT (not enqueued), raises any other error."""
        sha = self.scripts["dispatch"].sha
        with self.client.pipeline(transaction=False) as pipe:
            for message in messages:
                # The arguments of dramatiq's `_dispatch("enqueue")`, in its order.
                pipe.evalsha(
                    sha,
                    1,
                    self.namespace,
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
                )
            for queue_name in {m.queue_name for m in messages}:
                self._wake(pipe, queue_name, sum(m.queue_name == queue_name for m in messages))
            replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(
                reply, redis.exceptions.NoScriptError
            ):
                raise reply
        return [
            message
            for message, reply in zip(messages, replies, strict=False)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]

    def _should_do_maintenance(self, command: str) -> int:
        # dramatiq 2.2 decides per command; other commands keep its random chance.
        if command == _BEAT:
            return 1
        return int(super()._should_do_maintenance(command))

    def beat(self) -> None:
        """Refresh this broker's heartbeat and requeue the fetched-but-unacked messages of
        workers whose heartbeat has expired, on every declared queue and delay queue."""
        with self.translated():
            queues = self.get_declared_queues() | self.get_declared_delay_queues()
            for queue in sorted(queues):
                self.do_heartbeat(queue)

    def ping(self) -> None:
        with self.translated():
            self.client.ping()

    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        key = f"{self.namespace}:{queue}"
        with self.translated(), self.client.pipeline(transaction=False) as pipe:
            pipe.llen(key)
            pipe.hlen(f"{key}.msgs")
            pipe.hlen(f"{key}.DQ.msgs")
            pipe.zcard(f"{key}.XQ")
            ready, unacked, delayed, dead = (int(n) for n in pipe.execute())
        return {
            "ready": ready,
            "in_flight": max(0, unacked - ready),
            "delayed": delayed,
            "dead": dead,
        }

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        with self.translated():
            for redis_id, ids in self._scan_dead(queue):
                for transfer_id in ids:
                    found.setdefault(transfer_id, []).append(redis_id)
        return found

    def _scan_dead(self, queue: str) -> Iterator[tuple[str, list[int]]]:
        """(Redis id, transfer ids) of each dead letter of `queue`. A body that is not a
        settle message (undecodable, or carrying no transfer id) is skipped: it is not one
        of ours to list or drop."""
        key = f"{self.namespace}:{queue}.XQ.msgs"
        for raw_id, body in self.client.hscan_iter(key, count=SCAN_BATCH):
            redis_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                ids = transfer_ids(decode(body))
            except (DecodeError, ValueError):
                log.warning(
                    "dead letter %s in %s is not a settle message; left as it is", redis_id, queue
                )
                continue
            yield redis_id, ids

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        # The sorted set of ids and the hash of bodies, in one transaction.
        wanted = list(ids)
        if not wanted:
            return
        key = f"{self.namespace}:{queue}.XQ"
        with self.translated(), self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(key, *wanted)
            pipe.hdel(f"{key}.msgs", *wanted)
            pipe.execute()


def create(url: str, *, namespace: str, middleware: list[Middleware]) -> SettleRedisBroker:
    """The broker on the Redis at `url`, its keys under `namespace`. Connects lazily."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
    )
    return SettleRedisBroker(
        client=client,
        namespace=namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        middleware=middleware,
    )
