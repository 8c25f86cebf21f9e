"""The transfer actors: a message carries transfer ids, and one transaction settles a batch.

Dramatiq's own cost per message (fetch, middleware, ack: several Redis round trips) is of
the order of the SQL that settles a transfer, so messages carry up to `BATCH_MAX` ids and
`settle_transfers` settles them in one transaction. Nothing is declared at import:
`install(settings)` builds the broker, makes it the process's and declares the actors on it.
`web` uses only this module: `install`, `sender`, `pinger` and `queues`. Senders group ids: a web
process puts the ids its threads commit at about the same time into one message
(`GroupingSender`), the sweeper and `settle dead-letters retry` send what they claimed in
batches (`send_batches`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dramatiq
import dramatiq.errors
import pika.exceptions
import redis

from shared.db.pool import connection
from shared.errors import BrokerUnavailable
from shared.ledger import operations as ledger
from shared.runtime.settings import Settings
from worker.broker import (
    SETTLE_ACTOR,
    SETTLE_BATCH_ACTOR,
    SettleRedisBroker,
    create_broker,
    is_transient,
)
from worker.metrics import SETTLE_LATENCY
from worker.pool import current_pool
from worker.queues import TRANSFER_QUEUE, BrokerOperations, broker_operations

log = logging.getLogger(__name__)

#: Most transfer ids in one message, and in one settling transaction. Larger batches cost
#: fewer commits and messages but lock more accounts at once, so concurrent batches wait on
#: one another more; 100 was the best measured with 2,000 accounts (README, "Settlement").
BATCH_MAX = 100

#: How long the first of a web process's concurrent sends waits for others to join its
#: message. None by default: ids that arrive while a message is being sent join the next
#: one anyway, which groups them as the rate grows; a wait of 1 ms cost accepted -> settled
#: 1.7 ms at the median and more in the tail (a timed wait oversleeps on a busy machine) at
#: 300 transfers/s (README, "Settlement in batches").
SEND_WINDOW = 0.0


#: The settle actors, declared on the installed broker by `install`.
settle_transfers: dramatiq.Actor[[list[int]], None]
settle_transfer: dramatiq.Actor[[int], None]


def install(settings: Settings) -> dramatiq.Broker:
    """Build the broker for `settings`, make it dramatiq's global broker (dramatiq's CLI and
    `Actor.send` read it) and declare the actors on it; return it. The one place that sets
    dramatiq's global: each composition root calls it once, after any fork (the broker's
    Redis client belongs to one process) and before it sends or consumes: the dramatiq
    CLI's entry (`worker.dramatiq_entry:boot`), each web process, the sweeping process,
    `settle dead-letters`, and the test suite's conftest. Connects lazily."""
    global settle_transfers, settle_transfer
    broker, _ = create_broker(settings)
    dramatiq.set_broker(broker)
    settle_transfers = dramatiq.actor(
        queue_name=TRANSFER_QUEUE, actor_name=SETTLE_BATCH_ACTOR, broker=broker
    )(_settle_transfers)
    settle_transfer = dramatiq.actor(
        queue_name=TRANSFER_QUEUE, actor_name=SETTLE_ACTOR, broker=broker
    )(_settle_transfer)
    return broker


def __getattr__(name: str) -> Any:
    if name in ("settle_transfers", "settle_transfer"):
        raise AttributeError(
            f"worker.actors.{name} is declared by worker.actors.install(settings);"
            " the composition root calls it first"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pinger(broker: dramatiq.Broker) -> Callable[[], object]:
    """A function that checks the broker answers (readiness); it raises when it does not."""
    return broker_operations(broker).ping


def queues(broker: dramatiq.Broker) -> BrokerOperations:
    """What web reads of the broker's queues (`/metrics`, the dashboard): depths, and
    dropping the dead letters of transfers sent again."""
    return broker_operations(broker)


def _settle_transfers(transfer_ids: list[int]) -> None:
    """Settle a batch of transfers, `BATCH_MAX` at a time per transaction, each with its own
    outcome. Idempotent: transfers no longer pending (or named twice) are left alone.
    Transient database failures are counted on every transfer of the batch still pending
    and raised for a retry of the whole batch; when the retries run out, `DeadLetterMarks`
    parks those still pending (see worker.middleware)."""
    _settle(sorted({int(tid) for tid in transfer_ids}))


def _settle_transfer(transfer_id: int) -> None:
    """Settle one transfer: the message of a single id, as sent before batches existed (kept
    so that those messages are still consumed). Same guarantees as `settle_transfers`."""
    _settle([int(transfer_id)])


def _settle(ids: list[int]) -> None:
    outcomes: dict[int, ledger.Outcome] = {}
    try:
        # Autocommit: each call of the SQL function is its own transaction.
        with connection(current_pool()) as conn:
            for chunk in chunks(ids, BATCH_MAX):
                outcomes.update(ledger.settle_transfers(conn, chunk))
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The first line: Postgres appends the statement's context, which for the batch
        # function is longer than the error that a transfer keeps.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {reason}".strip()
        _record_attempt(ids, error)
        # Expected, and retried: dramatiq logs a Retry at no level, so an outage costs one
        # warning line per attempt (above) rather than a traceback at ERROR.
        raise dramatiq.Retry(error) from exc
    for transfer_id, (status, failure_code, latency) in outcomes.items():
        if latency is not None:
            SETTLE_LATENCY.observe(latency)
        if status == "missing":
            log.warning("transfer %s: no such transfer; dropped", transfer_id)
        elif failure_code:
            log.info("transfer %s: %s (%s)", transfer_id, status, failure_code)
    log.debug("settled batch of %d: %s", len(ids), _summary(outcomes))


def _summary(outcomes: dict[int, ledger.Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status, _, _ in outcomes.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    """`ids` in consecutive lists of at most `size`."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def send_batches(
    broker: dramatiq.Broker, transfer_ids: Sequence[int], *, size: int = BATCH_MAX
) -> int:
    """Queue `transfer_ids` for settlement in messages of at most `size` ids, sent in one
    Redis round trip (a pipeline); returns the number of messages. Raises
    `BrokerUnavailable` when the broker cannot take them (then some may have been queued:
    sending twice is harmless)."""
    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(
            queue_name=TRANSFER_QUEUE,
            actor_name=SETTLE_BATCH_ACTOR,
            args=(chunk,),
            kwargs={},
            options={},
        )
        for chunk in chunks(sorted(transfer_ids), size)
    ]
    try:
        if isinstance(broker, SettleRedisBroker):
            broker.enqueue_many(messages)
        else:
            for message in messages:
                broker.enqueue(message)
    except (redis.RedisError, pika.exceptions.AMQPError, dramatiq.errors.BrokerError) as exc:
        raise BrokerUnavailable(f"the message broker is unavailable: {exc}") from exc
    return len(messages)


class _Group:
    __slots__ = ("ids", "full", "done", "error")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.full = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupingSender:
    """Queues transfer ids for settlement, grouping those that this process's threads hand
    over at about the same time into one message; each caller still waits for the send of
    its own id and gets its error (`BrokerUnavailable`), so a web request answers 202 only
    once its transfer is queued.

    No thread of its own: the first caller of a group leads it. It waits up to `window`
    seconds (less when the group reaches `max_ids`; by default not at all), then for any
    send still in flight, then sends the group; ids arriving meanwhile form the next group.
    So a quiet process sends each id at once and a busy one sends fewer, larger messages.
    """

    def __init__(
        self,
        send: Callable[[list[int]], object],
        *,
        window: float = SEND_WINDOW,
        max_ids: int = BATCH_MAX,
    ) -> None:
        self._send = send
        self._window = window
        self._max_ids = max_ids
        self._lock = threading.Lock()  # guards `_open`
        self._sending = threading.Lock()  # one send at a time: the next group fills meanwhile
        self._open: _Group | None = None

    def __call__(self, transfer_id: int) -> None:
        with self._lock:
            group = self._open
            leader = group is None
            if group is None:
                group = self._open = _Group()
            group.ids.append(transfer_id)
            if len(group.ids) >= self._max_ids:
                self._open = None
                group.full.set()
        if leader:
            self._lead(group)
        else:
            group.done.wait()
        if group.error is not None:
            if isinstance(group.error, BrokerUnavailable) or leader:
                raise group.error
            raise BrokerUnavailable(f"the message could not be sent: {group.error}")

    def _lead(self, group: _Group) -> None:
        if self._window > 0:
            group.full.wait(self._window)
        with self._sending:
            with self._lock:
                if self._open is group:
                    self._open = None
            try:
                self._send(group.ids)
            except BaseException as exc:
                group.error = exc
            finally:
                group.done.set()


def sender(broker: dramatiq.Broker) -> Callable[[int], None]:
    """A function that queues a transfer id on `broker` for settlement, grouped with the ids
    other threads send at the same time (see `GroupingSender`). It raises
    `BrokerUnavailable` when the broker cannot take the message (Redis or RabbitMQ
    down, too slow, or refusing it)."""
    return GroupingSender(lambda ids: send_batches(broker, ids))


def _record_attempt(transfer_ids: list[int], error: str) -> None:
    log.warning("transfers %s: transient failure, will retry: %s", _ids_text(transfer_ids), error)
    try:
        with connection(current_pool()) as conn:
            ledger.record_failed_attempt(conn, transfer_ids, error)
    except Exception as again:  # the database may still be down; the retry is what matters
        log.warning(
            "transfers %s: could not record the failed attempt: %s", _ids_text(transfer_ids), again
        )


def _ids_text(ids: Sequence[int]) -> str:
    """A log-sized rendering of a batch's ids."""
    if len(ids) <= 10:
        return ",".join(map(str, ids))
    return f"{ids[0]}..{ids[-1]} ({len(ids)} ids)"
