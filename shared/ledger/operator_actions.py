"""What operators do to transfers from the dashboard, and the record of it (which also
keeps the retries of webhook deliveries, `shared.webhooks.operator`).

Retrying is what `settle dead-letters retry` does: clear a dead-lettered transfer's mark
(`shared.ledger.dead_letters.release`) and let the caller send it a fresh message after the
commit. Cancelling ends a dead-lettered transfer `failed` with `failure_code =
cancelled_by_operator`, moving no money. Both are idempotent: a transfer that is not
dead-lettered (settled, failed, or sent again already) is left as it is. Every change is
recorded in `operator_actions`, in the same transaction, with the key that asked for it.
Who may act is checked once, by `require_acting`, where a request becomes an action: the
functions that change something take the `Acting` it returns. Driver errors propagate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from shared.db import Row
from shared.ledger import dead_letters
from shared.ledger.attention import TransferFilter, dead_lettered_ids
from shared.ledger.auth import Principal, require_operator, require_writer

CANCELLED = "cancelled_by_operator"

#: Transfers released per transaction by a bulk retry: small enough that a batch holds its
#: row locks briefly, large enough that thousands take a handful of round trips.
BATCH = 500


@dataclass(frozen=True)
class Acting:
    """A principal that may act on transfers, as `require_acting` found it: only that
    function makes one, so whoever takes one needs no check of its own."""

    principal: Principal


def require_acting(by: Principal) -> Acting:
    """`by`, checked: an operator whose key is not read-only. Raises `OperatorOnly` or
    `ReadOnlyKey`."""
    require_operator(by)
    require_writer(by)
    return Acting(by)


def record(
    conn: psycopg.Connection,
    by: Acting,
    action: str,
    transfer_ids: Sequence[int],
    detail: str,
    *,
    webhook_endpoint_id: int | None = None,
    webhook_delivery_ids: Sequence[int] = (),
) -> None:
    """Add one row to the operator action record: `retry` or `cancel` of transfers, or
    `retry_webhook` of deliveries of one webhook endpoint (`shared.webhooks.operator`)."""
    conn.execute(
        "INSERT INTO operator_actions (key_id, action, transfer_ids, detail,"
        " webhook_endpoint_id, webhook_delivery_ids) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            by.principal.key_id,
            action,
            list(transfer_ids),
            detail,
            webhook_endpoint_id,
            list(webhook_delivery_ids),
        ),
    )


def retry(conn: psycopg.Connection, transfer_ids: Sequence[int], *, by: Acting) -> list[int]:
    """Release those of `transfer_ids` that are dead-lettered and record it; return the ids
    released (the caller sends each a message once this transaction has committed)."""
    with conn.transaction():
        released = dead_letters.release(conn, list(transfer_ids))
        if released:
            record(conn, by, "retry", released, f"retried {len(released)} transfer(s)")
    return released


def retry_batch(
    conn: psycopg.Connection, wanted: TransferFilter, *, after: int, by: Acting
) -> list[int]:
    """Release the next batch of dead-lettered transfers matching `wanted` with ids above
    `after`, recording it with the filter; return the ids released (empty: none left)."""
    with conn.transaction():
        ids = dead_lettered_ids(conn, wanted, after=after, limit=BATCH)
        released = dead_letters.release(conn, ids) if ids else []
        if released:
            record(
                conn,
                by,
                "retry",
                released,
                f"bulk retry of {len(released)} transfer(s) matching: {_shown(wanted)}",
            )
    return released


def _shown(wanted: TransferFilter) -> str:
    """A filter as the action record shows it."""
    return " ".join(f"{k}={v}" for k, v in sorted(wanted.params().items())) or "all"


#: Ends a dead-lettered transfer `failed` as cancelled, for each id of a locked set.
#: A leg of a chain (an atomic batch) is cancelled with its chain: the chain fails together.
_CANCEL = (
    "UPDATE transfers SET status = 'failed', failure_code = %s, dead_lettered_at = NULL,"
    " next_attempt_at = NULL, retry_message = NULL, finished_at = now()"
    " WHERE (id = ANY(%s) OR chain_id IN ("
    "SELECT c.chain_id FROM transfers c WHERE c.id = ANY(%s::bigint[])))"
    " AND dead_lettered_at IS NOT NULL RETURNING id"
)


def cancel(conn: psycopg.Connection, transfer_id: int, *, by: Acting) -> bool:
    """End a dead-lettered transfer `failed` (`cancelled_by_operator`), moving no money, and
    record it. False when it was not dead-lettered (nothing changed)."""
    with conn.transaction():
        row = conn.execute(_CANCEL, (CANCELLED, [transfer_id], [transfer_id])).fetchone()
        if row is not None:
            record(conn, by, "cancel", [transfer_id], "cancelled a dead-lettered transfer")
    return row is not None


def cancel_batch(
    conn: psycopg.Connection, wanted: TransferFilter, *, after: int, by: Acting
) -> list[int]:
    """Cancel the next batch of dead-lettered transfers matching `wanted` with ids above
    `after` (as `cancel` does each), recording it with the filter; return the ids cancelled
    (empty: none left). The batch is locked in ascending id order, skipping transfers
    another transaction holds."""
    with conn.transaction():
        ids = dead_lettered_ids(conn, wanted, after=after, limit=BATCH)
        rows = conn.execute(_CANCEL, (CANCELLED, ids, ids)).fetchall() if ids else []
        cancelled = sorted(int(row[0]) for row in rows)
        if cancelled:
            record(
                conn,
                by,
                "cancel",
                cancelled,
                f"bulk cancel of {len(cancelled)} transfer(s) matching: {_shown(wanted)}",
            )
    return cancelled


def recent(
    conn: psycopg.Connection,
    *,
    limit: int = 50,
    before: int | None = None,
    transfer_id: int | None = None,
) -> list[Row]:
    """The latest operator actions, newest first (`before`: only those with a smaller id;
    `transfer_id`: only those naming it): id, key_id, key_label, action, transfer_ids,
    detail, created_at, webhook_endpoint_id, webhook_delivery_ids."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.id, a.key_id, k.label AS key_label, a.action, a.transfer_ids, a.detail,"
            " a.created_at, a.webhook_endpoint_id, a.webhook_delivery_ids"
            " FROM operator_actions a LEFT JOIN api_keys k ON k.id = a.key_id"
            " WHERE a.id < %s AND (%s::bigint IS NULL OR a.transfer_ids @> ARRAY[%s::bigint])"
            " ORDER BY a.id DESC LIMIT %s",
            (before if before is not None else 2**63 - 1, transfer_id, transfer_id, limit),
        )
        return cur.fetchall()
