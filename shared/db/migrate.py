"""Schema migrations: numbered SQL files in `shared/db/migrations`, applied once each, in order.

`migrate` takes a transaction-level advisory lock, so concurrent releases wait for each
other instead of applying a file twice; a failing file rolls back whole and raises.
`session_defaults` gives the role the pools' timeouts when Settle runs behind PgBouncer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

#: Arbitrary constant identifying the migration lock among advisory locks.
_LOCK_ID = 0x5E771E


def available() -> list[tuple[str, str]]:
    """(name, sql) of every migration file shipped with the package, in order."""
    folder = resources.files("shared.db") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply the migrations not yet applied on `conn`'s database; return their names."""
    applied_now: list[str] = []
    with conn.transaction():
        # No timeouts of the role's (see `session_defaults`): a migration may wait and work.
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute("SET LOCAL lock_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for name, script in available():
            if name in done:
                continue
            log.info("applying migration %s", name)
            conn.execute(script.encode())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
    return applied_now


def session_defaults(conn: psycopg.Connection, timeouts: Iterable[tuple[str, int]]) -> None:
    """Make `timeouts` (the pools' `shared.db.pool.pool_timeouts`, in ms) the defaults of the
    connected role in the connected database (`ALTER ROLE CURRENT_USER IN DATABASE ... SET`),
    for use behind a transaction-mode pooler:
    Postgres applies them to every server connection the pooler opens, and they cost no round
    trip per transaction. Run it over DATABASE_URL, so that the role is the one the pooler
    logs in as. Server connections opened earlier keep their old values until the pooler
    replaces them. Raises `psycopg.Error` (for example without the right to alter the role)."""
    dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None
    for name, value in timeouts:
        conn.execute(
            sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET {} = {}").format(
                sql.Identifier(dbname[0]), sql.Identifier(name), sql.Literal(value)
            )
        )
