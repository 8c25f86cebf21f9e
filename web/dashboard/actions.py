"""What the dashboard's pages and its JSON twin do to transfers, in one place: retry one,
cancel one, retry all matching a filter, then send the released transfers and drop their
dead letters from the broker. Each function raises the ledger's errors (`ReadOnlyKey`,
`TransferNotFound`, ...) and driver errors; a broker failure is a notice, never an error,
since the database change has committed by then."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis
from psycopg_pool import ConnectionPool

from shared.db.pool import connection
from shared.errors import BrokerUnavailable, TransferNotFound
from shared.ledger import attention, operator_actions
from shared.ledger.attention import TransferFilter
from shared.ledger.auth import Principal
from web.dashboard.data import DiscardDead
from web.resources import path_id

log = logging.getLogger(__name__)

Enqueue = Callable[[int], None]
#: A bulk retry answers after this many seconds at most; what is left is one click away.
BULK_SECONDS = 20.0
#: What an operator reads when the broker failed while sending retried transfers.
BROKER_FAILED = (
    "The message broker failed; the retried transfers are plain pending again and the"
    " sweeper sends them after its grace period."
)


def transfer_id(raw: str) -> int:
    """The transfer id of a path segment. Raises `TransferNotFound`."""
    return path_id(raw, TransferNotFound, "transfer")


def send_released(
    enqueue: Enqueue, discard_dead: DiscardDead | None, ids: Sequence[int]
) -> str | None:
    """Send each released transfer a message, then drop its dead letters; a notice when the
    broker failed (they are plain pending again: the sweeper sends them after its grace
    period)."""
    try:
        for tid in ids:
            enqueue(tid)
    except BrokerUnavailable:
        log.warning("dashboard: the broker failed while sending %d retried transfer(s)", len(ids))
        return BROKER_FAILED
    drop_dead_letters(discard_dead, ids)
    return None


def drop_dead_letters(discard_dead: DiscardDead | None, ids: Sequence[int]) -> None:
    """Drop the dead letters of `ids`. A failure only leaves them to expire on their own
    (the broker keeps dead letters seven days), so it is logged, not raised."""
    if discard_dead is None or not ids:
        return
    try:
        discard_dead(ids)
    except (redis.RedisError, OSError) as exc:
        log.warning("dashboard: could not drop %d dead letter(s): %s", len(ids), exc)


def retry_one(
    pool: ConnectionPool,
    tid: int,
    by: Principal,
    *,
    enqueue: Enqueue,
    discard_dead: DiscardDead | None,
) -> tuple[bool, str | None]:
    """Retry one transfer: (whether it was dead-lettered and is sent again, a notice when
    the broker failed). Raises `TransferNotFound` for an unknown id."""
    operator_actions.require_acting(by)
    with connection(pool) as conn:
        released = operator_actions.retry(conn, [tid], by=by)
        if not released:
            attention.transfer_detail(conn, tid)  # a 404 for an unknown id
    return bool(released), send_released(enqueue, discard_dead, released)


def cancel_one(
    pool: ConnectionPool, tid: int, by: Principal, *, discard_dead: DiscardDead | None
) -> bool:
    """Cancel one dead-lettered transfer; False when it was not dead-lettered. Raises
    `TransferNotFound` for an unknown id."""
    operator_actions.require_acting(by)
    with connection(pool) as conn:
        done = operator_actions.cancel(conn, tid, by=by)
        if not done:
            attention.transfer_detail(conn, tid)
    if done:
        drop_dead_letters(discard_dead, [tid])
    return done


def bulk_retry(
    pool: ConnectionPool,
    wanted: TransferFilter,
    by: Principal,
    *,
    enqueue: Enqueue,
    discard_dead: DiscardDead | None,
    seconds: float = BULK_SECONDS,
) -> tuple[int, int, str | None]:
    """Retry the dead-lettered transfers matching `wanted`, a batch per transaction, each
    batch sent before the next is taken, for at most `seconds`. Returns (sent, batches, a
    notice when the broker failed)."""
    operator_actions.require_acting(by)
    deadline = time.monotonic() + seconds
    after, sent, batches = 0, 0, 0
    all_released: list[int] = []
    notice = None
    while time.monotonic() < deadline:
        with connection(pool) as conn:
            released = operator_actions.retry_batch(conn, wanted, after=after, by=by)
        if not released:
            break
        batches += 1
        sent += len(released)
        after = released[-1]
        notice = send_released(enqueue, None, released)
        all_released.extend(released)
        if notice:
            break
    if notice is None:
        drop_dead_letters(discard_dead, all_released)
    return sent, batches, notice
