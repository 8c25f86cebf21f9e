"""Dead-lettered transfers in Postgres: set aside after their settlement retries ran out.

Postgres holds the durable mark (`transfers.dead_lettered_at`, with `last_error`); the
message itself sits in the broker's dead-letter queue, which `worker.dead_letters` reads.
A dead-lettered transfer stays `pending`, no message settles it and the sweeper skips it;
only `release` (what `settle dead-letters retry` calls) makes it eligible again, with a
fresh retry budget. The broker's dead-letter messages follow: whoever retries or cancels
dead-lettered transfers, and the sweeper, drop the messages none of whose transfers is
dead-lettered any more (`still_dead_lettered`). The worker dead-letters a transfer whose
budget ran out in the same statement that counts its last failed attempt (the SQL function
`record_failed_attempt`); `mark_all` is for a batch that failed on an error not worth
retrying. Each function takes a connection and raises only driver errors, except
`still_dead_lettered_in`, which takes a pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.db import Row
from shared.db.pool import connection


def count_line(transfers: int, messages: int | None) -> str:
    """The one count of dead letters, as `settle status` and `settle dead-letters list` print
    it: dead-lettered transfers (the dashboard's and `/metrics`' number too), and the
    messages of the broker's dead-letter queue that carry them (None: not known)."""
    line = f"dead letters: {transfers} transfer(s)"
    if messages is not None:
        line += f"; {messages} message(s) in the dead-letter queue"
    return line


def mark(conn: psycopg.Connection, transfer_id: int, error: str) -> bool:
    """Dead-letter a pending transfer, keeping `error` as its last error. False when it is
    no longer pending (a duplicate message settled it) or was dead-lettered already."""
    return bool(mark_all(conn, [transfer_id], error))


def mark_all(conn: psycopg.Connection, transfer_ids: Sequence[int], error: str) -> list[int]:
    """Dead-letter those of `transfer_ids` still pending and not dead-lettered yet (a batch
    that failed for good), keeping `error` as their last error; return the ids marked, in
    order. The others were settled or failed meanwhile, by this batch's earlier attempts or
    by another message, or were dead-lettered before. Locks in ascending id order and skips
    transfers another transaction holds (a settlement in flight records its own outcome), so
    it never waits: no lock timeout can make it lose its mark."""
    rows = conn.execute(
        "UPDATE transfers SET dead_lettered_at = now(), last_error = %s,"
        " next_attempt_at = NULL, retry_message = NULL"
        " WHERE id IN (SELECT id FROM transfers WHERE id = ANY(%s) AND status = 'pending'"
        " AND dead_lettered_at IS NULL ORDER BY id FOR NO KEY UPDATE SKIP LOCKED)"
        " RETURNING id",
        (error[:500], list(transfer_ids)),
    ).fetchall()
    return sorted(int(row[0]) for row in rows)


def rows(conn: psycopg.Connection) -> list[Row]:
    """Every dead-lettered transfer, the longest dead-lettered first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, from_account_id, to_account_id, amount, currency, attempts, created_at,"
            " dead_lettered_at, last_error FROM transfers WHERE dead_lettered_at IS NOT NULL"
            " ORDER BY dead_lettered_at, id"
        )
        return cur.fetchall()


def still_dead_lettered(conn: psycopg.Connection, transfer_ids: Sequence[int]) -> set[int]:
    """Those of `transfer_ids` that are dead-lettered (the others: settled, failed, sent
    again, never marked, or unknown)."""
    rows = conn.execute(
        "SELECT id FROM transfers WHERE id = ANY(%s) AND dead_lettered_at IS NOT NULL",
        (list(transfer_ids),),
    ).fetchall()
    return {int(row[0]) for row in rows}


def still_dead_lettered_in(pool: ConnectionPool) -> Callable[[Sequence[int]], set[int]]:
    """`still_dead_lettered` on a connection of `pool` held for that one query: what
    `SettleBroker.drop_cleared_dead_letters` asks while it reads the broker. Raises
    `DatabaseBusy` and `DatabaseUnavailable` as `shared.db.pool.connection` does."""

    def check(transfer_ids: Sequence[int]) -> set[int]:
        with connection(pool) as conn:
            return still_dead_lettered(conn, transfer_ids)

    return check


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
    """Clear the mark of the given dead-lettered transfers (all of them when `transfer_ids`
    is None) and of the other legs of their chains (a chain is released whole, as it is
    dead-lettered whole), give them a fresh retry budget and count them as sent now; return
    the ids released, in order. Locks them in ascending id order (waiting for each, up to the lock
    timeout) before it writes.

    The caller sends each one a message next; should that fail, the sweeper sends it once
    its grace period has passed, since it is no longer dead-lettered.
    """
    rows = conn.execute(
        "UPDATE transfers SET dead_lettered_at = NULL, enqueued_at = now(),"
        " failed_attempts = 0, next_attempt_at = NULL, retry_message = NULL"
        " WHERE id IN (SELECT id FROM transfers WHERE dead_lettered_at IS NOT NULL"
        " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]) OR chain_id IN ("
        "SELECT c.chain_id FROM transfers c WHERE c.id = ANY(%s::bigint[])))"
        " ORDER BY id FOR NO KEY UPDATE)"
        " RETURNING id",
        (None if transfer_ids is None else list(transfer_ids),) * 3,
    ).fetchall()
    return sorted(int(row[0]) for row in rows)
