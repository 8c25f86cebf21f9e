"""A large synthetic ledger for the listing's plans and benchmark: many transfers among many
accounts, made in a few set-based statements on a scratch database.

The rows look like a busy service's history: mostly settled, a few failed and pending, one
account (a merchant's) on the receiving end of one transfer in twenty, one transfer in ten
with metadata (`order_id`, unique), accepted about 30 ms apart over the period, a few out of
id order. Settled rows get no ledger entries: the database is for reading lists, not an
audit, and is dropped afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Bulk:
    """What `load` made: the accounts (the merchant first), the transfers' id range, and the
    users who own the accounts (`users[i]` owns `accounts[i]`)."""

    accounts: list[int]
    users: list[int]
    first_id: int
    last_id: int

    @property
    def merchant(self) -> int:
        return self.accounts[0]


def load(conn: psycopg.Connection, transfers: int, *, accounts: int = 1000) -> Bulk:
    """Insert `accounts` users with one EUR account each and `transfers` transfers among
    them, then ANALYZE, so the planner knows the table as it is."""
    tag = uuid.uuid4().hex[:8]
    with conn.transaction():
        rows = conn.execute(
            "WITH u AS (INSERT INTO users (email, name)"
            " SELECT format('bulk%%s-%%s@bulk.example', g, %s::text), format('B%%s', g)"
            " FROM generate_series(1, %s) AS g RETURNING id)"
            " INSERT INTO accounts (user_id, currency, allow_negative_balance)"
            " SELECT id, 'EUR', true FROM u ORDER BY id RETURNING id, user_id",
            (tag, accounts),
        ).fetchall()
    ids = sorted(int(r[0]) for r in rows)
    owners = {int(r[0]): int(r[1]) for r in rows}
    n = len(ids)
    # Identity values of one statement: consecutive, so account i is ids[0] + i.
    assert ids[-1] - ids[0] == n - 1
    with conn.transaction():
        restore = _set_aside_indexes_and_foreign_keys(conn)
        span = _insert(conn, transfers, n=n, first=ids[0], tag=tag)
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for statement in restore:
            conn.execute(statement)
    conn.execute("ANALYZE users, accounts, transfers")
    return Bulk(ids, [owners[a] for a in ids], span[0], span[1])


def _set_aside_indexes_and_foreign_keys(conn: psycopg.Connection) -> list[str]:
    """Drop the secondary indexes and foreign keys of `transfers` and return the statements
    that make them again, exactly as the migrations defined them: the usual way to load in
    bulk (one index build beats a million index insertions), as pg_restore does it."""
    indexes = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = 'transfers'::regclass AND NOT i.indisprimary AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
    ).fetchall()
    keys = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'transfers'::regclass AND contype = 'f'"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    for name, _ in keys:
        conn.execute(
            sql.SQL("ALTER TABLE transfers DROP CONSTRAINT {}").format(sql.Identifier(name))
        )
    return [definition for _, definition in indexes] + [
        f"ALTER TABLE transfers ADD CONSTRAINT {name} {definition}" for name, definition in keys
    ]


def _insert(
    conn: psycopg.Connection, transfers: int, *, n: int, first: int, tag: str
) -> tuple[int, int]:
    span = conn.execute(
        "WITH g AS (SELECT g, (g * 7) %% %(n)s AS i,"
        "  CASE WHEN (g * 7919) %% 100 < 96 THEN 'settled'"
        "       WHEN (g * 7919) %% 100 < 99 THEN 'failed' ELSE 'pending' END AS st"
        "  FROM generate_series(1, %(count)s::bigint) AS g),"
        " p AS (SELECT g, st, i,"
        "  CASE WHEN g %% 20 = 0 AND i <> 0 THEN 0"
        "   ELSE (i + 1 + g %% (%(n)s - 1)) %% %(n)s END AS j"
        "  FROM g),"
        " made AS (INSERT INTO transfers (idempotency_scope, idempotency_key, request_hash,"
        " from_account_id, to_account_id, amount, currency, status, failure_code, attempts,"
        " created_at, enqueued_at, settled_at, finished_at, metadata)"
        " SELECT 'operator', %(tag)s || '-' || g, 'bulk', %(first)s + i, %(first)s + j,"
        " 1 + g %% 997,"
        " 'EUR', st, CASE WHEN st = 'failed' THEN 'insufficient_funds' END,"
        " CASE WHEN st = 'pending' THEN 0 ELSE 1 END,"
        " ts, ts, CASE WHEN st = 'settled' THEN ts END, CASE WHEN st <> 'pending' THEN ts END,"
        " CASE WHEN g %% 10 = 0 THEN jsonb_build_object('order_id', 'o-' || g)"
        " ELSE '{}'::jsonb END"
        " FROM p CROSS JOIN LATERAL (SELECT timestamptz '2024-01-01 00:00:00+00'"
        "  + g * interval '30 milliseconds' - (g %% 7) * interval '40 milliseconds' AS ts) t"
        " ORDER BY g RETURNING id) SELECT min(id), max(id) FROM made",
        {"n": n, "count": transfers, "first": first, "tag": tag},
    ).fetchone()
    assert span is not None
    return int(span[0]), int(span[1])
