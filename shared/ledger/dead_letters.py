"""Dead-lettered transfers in Postgres: parked after their settlement retries ran out.

Postgres holds the durable mark (`transfers.dead_lettered_at`, with `last_error`); the
message itself sits in the broker's dead-letter queue, which `worker.dead_letters` reads.
A parked transfer stays `pending`, the sweeper skips it, and only `release` (what
`settle dead-letters retry` calls) makes it eligible again. Each function takes a
connection and raises only driver errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]


def mark(conn: psycopg.Connection, transfer_id: int, error: str) -> bool:
    """Park a pending transfer whose retries ran out, keeping `error` as its last error.
    False when the transfer is no longer pending (a duplicate message settled it)."""
    return bool(mark_all(conn, [transfer_id], error))


def mark_all(conn: psycopg.Connection, transfer_ids: Sequence[int], error: str) -> list[int]:
    """Park those of `transfer_ids` still pending (a batch whose retries ran out), keeping
    `error` as their last error; return the ids parked, in order. The others were settled
    or failed meanwhile, by this batch's earlier attempts or by another message."""
    rows = conn.execute(
        "UPDATE transfers SET dead_lettered_at = now(), last_error = %s"
        " WHERE id = ANY(%s) AND status = 'pending' RETURNING id",
        (error[:500], list(transfer_ids)),
    ).fetchall()
    return sorted(int(row[0]) for row in rows)


def parked(conn: psycopg.Connection) -> list[Row]:
    """Every dead-lettered transfer, the longest parked first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, from_account_id, to_account_id, amount, currency, attempts, created_at,"
            " dead_lettered_at, last_error FROM transfers WHERE dead_lettered_at IS NOT NULL"
            " ORDER BY dead_lettered_at, id"
        )
        return cur.fetchall()


def statuses(conn: psycopg.Connection, transfer_ids: Sequence[int]) -> dict[int, str]:
    """`settled`, `failed`, `pending` or `dead-lettered` for each of `transfer_ids` that
    exists (unknown ids are left out)."""
    rows = conn.execute(
        "SELECT id, CASE WHEN dead_lettered_at IS NOT NULL THEN 'dead-lettered' ELSE status END"
        " FROM transfers WHERE id = ANY(%s)",
        (list(transfer_ids),),
    ).fetchall()
    return {int(tid): str(state) for tid, state in rows}


def release(conn: psycopg.Connection, transfer_ids: Sequence[int] | None) -> list[int]:
    """Clear the mark of the given parked transfers (all of them when `transfer_ids` is None)
    and count them as sent now; return the ids released, in order.

    The caller sends each one a message next; should that fail, the sweeper sends it once
    its grace period has passed, since it is no longer parked.
    """
    if transfer_ids is None:
        rows = conn.execute(
            "UPDATE transfers SET dead_lettered_at = NULL, enqueued_at = now()"
            " WHERE dead_lettered_at IS NOT NULL RETURNING id"
        ).fetchall()
    else:
        rows = conn.execute(
            "UPDATE transfers SET dead_lettered_at = NULL, enqueued_at = now()"
            " WHERE dead_lettered_at IS NOT NULL AND id = ANY(%s) RETURNING id",
            (list(transfer_ids),),
        ).fetchall()
    return sorted(int(row[0]) for row in rows)
