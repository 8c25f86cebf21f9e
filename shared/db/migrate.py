"""Schema migrations: numbered SQL files in `shared/db/migrations`, applied once each, in order.

`migrate` takes a transaction-level advisory lock, so concurrent releases wait for each
other instead of applying a file twice; a failing file rolls back whole and raises.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

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
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for name, sql in available():
            if name in done:
                continue
            log.info("applying migration %s", name)
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
    return applied_now
