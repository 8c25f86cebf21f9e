"""What the dashboard's pages and its JSON twin do, in one place: to transfers, retry one,
cancel one, retry all matching a filter, then send the released transfers and drop the
dead-letter messages none of whose transfers is dead-lettered any more; to webhook
deliveries, retry one failed delivery or all of an endpoint's. Each takes the
`Acting` of `operator_actions.require_acting` (whoever acts was checked once, before), and
raises the ledger's errors (`TransferNotFound`, ...) and driver errors.

Every action on transfers needs the broker, so each first checks that it answers: while it
is down the action raises `BrokerUnavailable` (503 `broker_unavailable`) and changes
nothing. A broker
that fails after the database change has committed is a notice beside the result, never an
error: the change stands, and the notice says what is left to whom.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

from shared.db.pool import connection
from shared.errors import (
    BrokerUnavailable,
    TransferNotFound,
    Unavailable,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    first_line,
)
from shared.ledger import attention, operator_actions
from shared.ledger.attention import TransferFilter
from shared.ledger.operator_actions import Acting
from shared.webhooks import operator
from web.dashboard.data import ClearDead
from web.resources import path_id

log = logging.getLogger(__name__)

Enqueue = Callable[[int], None]
#: `retry_one` or `cancel_one`.
OneAction = Callable[..., tuple[bool, str | None]]
#: A bulk retry answers after this many seconds at most; what is left is one click away.
BULK_SECONDS = 20.0
#: What an operator reads when the broker failed while sending retried transfers.
BROKER_FAILED = (
    "The message broker failed; the retried transfers are plain pending again and the"
    " sweeper sends them after its grace period."
)
#: What an operator reads when the broker failed while dropping dead letters.
DEAD_LETTERS_LEFT = (
    "The message broker failed while dropping these transfers' dead-letter messages; the"
    " sweeper drops them once it can."
)


@dataclass(frozen=True)
class BrokerCalls:
    """What the dashboard's actions ask of the broker: whether it answers (before anything
    changes), a message for a released transfer, and dropping the dead letters none of
    whose transfers is dead-lettered any more (None: the sweeper does). Each raises
    `BrokerUnavailable`."""

    ping: Callable[[], object]
    enqueue: Enqueue
    clear_dead: ClearDead | None


def require_broker(broker: BrokerCalls) -> None:
    """Raise `BrokerUnavailable` when the broker does not answer, before an action changes
    anything."""
    try:
        broker.ping()
    except BrokerUnavailable as exc:
        log.warning("dashboard: action refused, %s", exc.message)
        raise BrokerUnavailable(
            "the message broker is unavailable, so nothing was changed; try again once it is back"
        ) from exc


def transfer_id(raw: str) -> int:
    """The transfer id of a path segment. Raises `TransferNotFound`."""
    return path_id(raw, TransferNotFound, "transfer")


def endpoint_id(raw: str) -> int:
    """The webhook endpoint id of a path segment. Raises `WebhookEndpointNotFound`."""
    return path_id(raw, WebhookEndpointNotFound, "webhook endpoint")


def delivery_id(raw: str) -> int:
    """The webhook delivery id of a path segment. Raises `WebhookDeliveryNotFound`."""
    return path_id(raw, WebhookDeliveryNotFound, "webhook delivery")


def send_released(broker: BrokerCalls, ids: Sequence[int], *, drop: bool = True) -> str | None:
    """Send each released transfer a message, then (with `drop`) drop the dead letters
    cleared; a notice when the broker failed (they are plain pending again: the sweeper
    sends them after its grace period)."""
    try:
        for tid in ids:
            broker.enqueue(tid)
    except BrokerUnavailable:
        log.warning("dashboard: the broker failed while sending %d retried transfer(s)", len(ids))
        return BROKER_FAILED
    return drop_dead_letters(broker) if drop and ids else None


def drop_dead_letters(broker: BrokerCalls) -> str | None:
    """Drop the dead-letter messages none of whose transfers is dead-lettered any more. A
    failure only leaves them for the sweeper's next clearing: a notice, not an error."""
    if broker.clear_dead is None:
        return None
    try:
        broker.clear_dead()
    except (Unavailable, psycopg.Error) as exc:  # the broker, or Postgres asked about them
        log.warning("dashboard: could not drop dead letters: %s", first_line(exc))
        return DEAD_LETTERS_LEFT
    return None


def retry_one(
    pool: ConnectionPool,
    tid: int,
    by: Acting,
    *,
    broker: BrokerCalls,
) -> tuple[bool, str | None]:
    """Retry one transfer: (whether it was dead-lettered and is sent again, a notice when
    the broker failed after the change). Raises `TransferNotFound` for an unknown id and
    `BrokerUnavailable` when the broker is down before it."""
    require_broker(broker)
    with connection(pool) as conn:
        released = operator_actions.retry(conn, [tid], by=by)
        if not released:
            attention.transfer_detail(conn, tid)  # a 404 for an unknown id
    return bool(released), send_released(broker, released)


def cancel_one(
    pool: ConnectionPool, tid: int, by: Acting, *, broker: BrokerCalls
) -> tuple[bool, str | None]:
    """Cancel one dead-lettered transfer: (False when it was not dead-lettered, a notice when
    the broker failed after the change). Raises `TransferNotFound` for an unknown id and
    `BrokerUnavailable` when the broker is down before it."""
    require_broker(broker)
    with connection(pool) as conn:
        done = operator_actions.cancel(conn, tid, by=by)
        if not done:
            attention.transfer_detail(conn, tid)
    return done, drop_dead_letters(broker) if done else None


def bulk_retry(
    pool: ConnectionPool,
    wanted: TransferFilter,
    by: Acting,
    *,
    broker: BrokerCalls,
    seconds: float = BULK_SECONDS,
) -> tuple[int, int, str | None]:
    """Retry the dead-lettered transfers matching `wanted`, a batch per transaction, each
    batch sent before the next is taken, for at most `seconds`. Returns (sent, batches, a
    notice when the broker failed on the way). Raises `BrokerUnavailable` when the broker
    is down before it."""
    require_broker(broker)
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
        notice = send_released(broker, released, drop=False)
        all_released.extend(released)
        if notice:
            break
    if notice is None and all_released:
        notice = drop_dead_letters(broker)
    return sent, batches, notice


# Retrying webhook deliveries needs no broker: it sets them pending in Postgres, and the
# dispatcher sends their messages (once the broker answers, if it does not now).


def retry_delivery(
    pool: ConnectionPool, endpoint: int, delivery: int, by: Acting, *, retry_hours: float
) -> bool:
    """Retry delivery `delivery` of endpoint `endpoint` if it failed, with `retry_hours` of
    retries: whether it did (and is pending again). Raises `WebhookDeliveryNotFound` for one
    not of that endpoint."""
    with connection(pool) as conn:
        retried = operator.retry_deliveries(
            conn,
            [delivery],
            by=by,
            window=operator.retry_window(retry_hours),
            endpoint_id=endpoint,
        )
    return bool(retried)


def retry_endpoint(pool: ConnectionPool, endpoint: int, by: Acting, *, retry_hours: float) -> int:
    """Retry every failed delivery of endpoint `endpoint`, with `retry_hours` of retries: how
    many are pending again. Raises `WebhookEndpointNotFound` for an unknown or deleted
    endpoint."""
    with connection(pool) as conn:
        return operator.retry_failed(
            conn, endpoint, by=by, window=operator.retry_window(retry_hours)
        )
