"""Noticing a transaction pooler (PgBouncer in transaction mode, or any other) in front of
DATABASE_URL that DB_POOLER does not declare.

Such a pooler answers like the Postgres behind it, but hands each transaction of a client
to whichever server connection is free. A Settle that does not know it breaks in use: its
prepared statements vanish between transactions (reads answer 500 with `prepared statement
"_pg3_N" does not exist`) and its timeouts, sent as startup options, are refused or dropped.
So the boot check probes for one, with two client connections A and B:

1. A sets a session variable and reads its server's `pg_backend_pid()`;
2. A reads them both again, in a second transaction;
3. B reads its server's `pg_backend_pid()`.

Straight to Postgres (or through a session pooler), each client keeps one server
connection for its life: A sees its variable and one pid, and B another pid. A transaction
pooler shows itself whichever server it hands out next: if it moves A (round robin), A's pid
changes and its variable is gone; if it hands out the server it just got back (PgBouncer's
default), B lands on A's server and sees A's pid. Neither can happen without a pooler, so the
probe never mistakes a plain Postgres for one; it could miss a pooler only if another client
took that server between steps 2 and 3, so it runs a few rounds.
"""

from __future__ import annotations

import secrets

import psycopg

from shared.config import Settings
from shared.db.pool import redact
from shared.errors import DependencyDown, PoolerUndeclared, first_line

#: Rounds of the probe: each needs another client to slip in at exactly the wrong moment to
#: miss a pooler.
ROUNDS = 3
_VARIABLE = "settle.pooler_probe"


def _connect(url: str, name: str, timeout: float) -> psycopg.Connection:
    # No startup options (a pooler may refuse them) and no prepared statements (a pooler
    # may lose them): the probe must work through whatever is there.
    return psycopg.connect(
        url,
        autocommit=True,
        application_name=name,
        connect_timeout=max(1, int(timeout)),
        prepare_threshold=None,
    )


def transaction_pooled(url: str, *, name: str = "settle:probe", timeout: float = 5.0) -> bool:
    """Whether consecutive transactions of one connection to `url` may run on different
    server connections (a transaction pooler is in front of Postgres). Raises
    `psycopg.Error` when the server cannot be reached."""
    with _connect(url, name, timeout) as a, _connect(url, name, timeout) as b:
        for _ in range(ROUNDS):
            token = secrets.token_hex(8)
            first = a.execute(
                "SELECT pg_backend_pid(), set_config(%s, %s, false)", (_VARIABLE, token)
            ).fetchone()
            second = a.execute(
                "SELECT pg_backend_pid(), current_setting(%s, true)", (_VARIABLE,)
            ).fetchone()
            other = b.execute("SELECT pg_backend_pid()").fetchone()
            assert first is not None and second is not None and other is not None
            if first[0] != second[0] or second[1] != token or other[0] in (first[0], second[0]):
                return True
    return False


def check_pooler(settings: Settings, *, name: str = "settle:probe") -> None:
    """Boot check: unless DB_POOLER declares a pooler, raises `PoolerUndeclared` (one line
    naming DB_POOLER) when DATABASE_URL leads through a transaction pooler. Raises
    `DependencyDown` (one line) when the server cannot be reached."""
    if settings.pooled:
        return
    try:
        pooled = transaction_pooled(settings.database_url, name=name)
    except psycopg.Error as exc:
        raise DependencyDown(
            f"Postgres unreachable at {redact(settings.database_url)}: {first_line(exc)}"
        ) from None
    if not pooled:
        return
    raise PoolerUndeclared(
        "DATABASE_URL leads through a transaction pooler (one connection's transactions ran"
        " on different server connections), but DB_POOLER is not set to pgbouncer: set"
        " DB_POOLER=pgbouncer (and DATABASE_DIRECT_URL to Postgres itself), or point"
        " DATABASE_URL at Postgres"
    )
