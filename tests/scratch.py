"""Scratch databases: a fresh, migrated database of its own for a suite, a test that must see
a whole ledger (an audit, a fault test) or a benchmark, created on a server and dropped
afterwards. The one implementation: tests/conftest.py, the tests and bench/ all use it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shared.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
SETTLE = Path(sys.executable).with_name("settle")


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "settle_scratch") -> Iterator[str]:
    """Create and migrate a database on the server of `server_url`; yield its URL; drop it
    (closing any connection left to it) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def settle(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `settle <args>` with `env` to completion; stdout and stderr are captured together."""
    return subprocess.run(
        [str(SETTLE), *args],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
