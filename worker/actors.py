"""The transfer actors: a message carries transfer ids, and one transaction settles a batch.

Dramatiq's own cost per message (fetch, middleware, ack: several Redis round trips) is of
the order of the SQL that settles a transfer, so messages carry up to `BATCH_MAX` ids and
`settle_transfers` settles them in one transaction. Nothing is declared at import:
`install(settings)` builds the broker (`create_broker`: `shared.broker` with the worker's
middleware), makes it the process's and declares the actors on it. `web` uses only
`install` of this module; it sends through the broker `install` returns
(`shared.broker.sending`).

The middleware list is explicit. TimeLimit is left out on purpose: it injects an exception
into the actor's thread, and one landing during COMMIT would leave the outcome unknown;
Postgres timeouts (statement, lock, idle-in-transaction) bound the transfer work instead.
The middleware is the same on both brokers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import AgeLimit, Retries

from shared.broker import factory
from shared.broker.base import SettleBroker
from shared.broker.messages import (
    BATCH_MAX,
    SETTLE_ACTOR,
    SETTLE_ACTORS,
    SETTLE_BATCH_ACTOR,
    TRANSFER_QUEUE,
    chunks,
)
from shared.db.pool import TRANSIENT, connection
from shared.errors import Unavailable
from shared.ledger import operations as ledger
from shared.runtime.settings import Settings
from worker.metrics import SETTLE_LATENCY, Telemetry
from worker.middleware import DeadLetterMarks, Heartbeat
from worker.pool import LendConnections, current_pool

log = logging.getLogger(__name__)


#: The settle actors, declared on the installed broker by `install`.
settle_transfers: dramatiq.Actor[[list[int]], None]
settle_transfer: dramatiq.Actor[[int], None]


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy, unreachable or chose a victim (the
    actor raises those as `dramatiq.Retry`)."""
    return isinstance(exc, (*TRANSIENT, Unavailable, dramatiq.Retry))


def create_broker(settings: Settings) -> tuple[SettleBroker, LendConnections]:
    """The broker `settings.message_broker_url` names (Redis, or RabbitMQ for `amqp://`)
    with retries for transient errors only, the middleware that owns each worker process's
    pool, the heartbeat, and the dead-letter mark; and that pool's middleware. Connects
    lazily."""
    max_retries = settings.transfer_max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        # `retries` counts the retries already made: TRANSFER_MAX_RETRIES=N allows N of them.
        return retries < max_retries and is_transient(exc)

    database = LendConnections(settings)
    middleware = [
        # First: its after-hook runs last, once Retries has marked a message failed.
        Telemetry(database, SETTLE_ACTORS),
        AgeLimit(),
        # Before Retries: after-hooks run in reverse, and Retries decides "failed".
        DeadLetterMarks(database, SETTLE_ACTORS),
        Retries(
            max_retries=max_retries,
            min_backoff=settings.transfer_min_backoff_ms,
            max_backoff=settings.transfer_max_backoff_ms,
            retry_when=retry_when,
        ),
        database,
        Heartbeat(),
    ]
    broker = factory.create_broker(
        settings.message_broker_url, namespace=settings.broker_namespace, middleware=middleware
    )
    return broker, database


def install(settings: Settings) -> SettleBroker:
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
