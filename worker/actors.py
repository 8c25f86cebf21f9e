"""The transfer actor: takes a transfer id, settles it in one Postgres transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable

import dramatiq
import dramatiq.errors
import redis

from shared.db.pool import connection
from shared.errors import BrokerUnavailable
from shared.ledger import operations as ledger
from worker.broker import SETTLE_ACTOR, is_transient
from worker.metrics import SETTLE_LATENCY
from worker.pool import current_pool
from worker.queues import TRANSFER_QUEUE

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name=TRANSFER_QUEUE, actor_name=SETTLE_ACTOR)
def settle_transfer(transfer_id: int) -> None:
    """Settle one transfer. Idempotent: a transfer no longer pending is left alone.
    Transient database failures are counted on the transfer and raised for a retry; when
    the retries run out, `DeadLetterMarks` parks the transfer (see worker.middleware)."""
    try:
        with connection(current_pool()) as conn:
            status, failure_code, latency = ledger.settle_transfer_timed(conn, transfer_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        error = f"{type(exc).__name__}: {exc}".strip()
        _record_attempt(transfer_id, error)
        # Expected, and retried: dramatiq logs a Retry at no level, so an outage costs one
        # warning line per attempt (above) rather than a traceback at ERROR.
        raise dramatiq.Retry(error) from exc
    if latency is not None:
        SETTLE_LATENCY.observe(latency)
    if status == "missing":
        log.warning("transfer %s: no such transfer; message dropped", transfer_id)
    elif failure_code:
        log.info("transfer %s: %s (%s)", transfer_id, status, failure_code)
    else:
        log.debug("transfer %s: %s", transfer_id, status)


def sender(broker: dramatiq.Broker) -> Callable[[int], None]:
    """A function that queues a transfer id on `broker` for settlement. It raises
    `BrokerUnavailable` when the broker cannot take the message (Redis down or too slow)."""

    def send(transfer_id: int) -> None:
        try:
            broker.enqueue(settle_transfer.message(transfer_id))
        except (redis.RedisError, dramatiq.errors.BrokerError) as exc:
            raise BrokerUnavailable(f"the message broker is unavailable: {exc}") from exc

    return send


def _record_attempt(transfer_id: int, error: str) -> None:
    log.warning("transfer %s: transient failure, will retry: %s", transfer_id, error)
    try:
        with connection(current_pool()) as conn:
            ledger.record_failed_attempt(conn, transfer_id, error)
    except Exception as again:  # the database may still be down; the retry is what matters
        log.warning("transfer %s: could not record the failed attempt: %s", transfer_id, again)
