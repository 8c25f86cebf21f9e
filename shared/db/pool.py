"""The pool factory, one-off connections, the boot checks, and the translation of driver
errors into domain errors. The pool class itself (`ElasticPool`) lives in
`shared.db.psycopg_pool_adapter`, with the psycopg_pool internals it needs.

Pools are built closed (`open=False`); the process's composition root opens them after any
fork and closes them on shutdown. Nothing here connects at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.config import Settings
from shared.db.psycopg_pool_adapter import ElasticPool
from shared.errors import DatabaseBusy, DatabaseUnavailable, DependencyDown, first_line

log = logging.getLogger(__name__)

#: SQLSTATEs that mean "try again": the transaction was a victim, not wrong.
TRANSIENT = (
    psycopg.OperationalError,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,
    PoolTimeout,
)


def application_name(role: str, hostname: str) -> str:
    """`settle:<role>:<host>:<pid>`, so pg_stat_activity shows who holds each connection.
    Postgres keeps 63 characters: a long host name is cut, never the pid, which tells
    processes (and their connection leases) apart."""
    pid = str(os.getpid())
    room = 63 - len(f"settle:{role}::{pid}")
    return f"settle:{role}:{hostname[: max(room, 0)]}:{pid}"


def connect_kwargs(settings: Settings, role: str) -> dict[str, object]:
    """Connection parameters shared by pools and one-off connections: autocommit (a single
    statement is its own transaction: one round trip), Postgres-side timeouts, and the
    application name.

    Through PgBouncer in transaction mode (DB_POOLER=pgbouncer) consecutive transactions may
    run on different server connections, so nothing may depend on the session: psycopg's
    prepared statements are off (`prepare_threshold=None`; PgBouncer 1.18 cannot carry
    them), and the timeouts are not sent as startup `options` (PgBouncer refuses or drops
    them) but come from the role's defaults in the database, which `settle migrate` sets
    (`shared.db.migrate.session_defaults`). `application_name` still works: PgBouncer sets
    it on the server connection for each client it serves.
    """
    kwargs: dict[str, object] = {
        "autocommit": True,
        "application_name": application_name(role, settings.hostname),
        "connect_timeout": 5,
    }
    if settings.pooled:
        kwargs["prepare_threshold"] = None
    else:
        kwargs["options"] = " ".join(
            f"-c {name}={value}" for name, value in pool_timeouts(settings)
        )
    return kwargs


def pool_timeouts(settings: Settings) -> list[tuple[str, int]]:
    """The Postgres timeouts (in ms) every pooled connection runs with, by Postgres's name."""
    return [
        ("statement_timeout", settings.statement_timeout_ms),
        ("lock_timeout", settings.lock_timeout_ms),
        ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout_ms),
    ]


def connect_once(
    settings: Settings, role: str, *, timeouts: bool = False, session: bool = False
) -> psycopg.Connection:
    """A one-off autocommit connection outside any pool, named `settle:<role>:...`, for a
    command or a short protocol step; it comes out of DB_RESERVED_CONNECTIONS. Without
    `timeouts` it has no statement timeout (a migration or an audit of a large ledger may take
    a while; behind PgBouncer the timeouts are the role's defaults, which those two lift in
    their transaction); with them, the pools' Postgres-side timeouts. `session=True` connects
    to Postgres itself (DATABASE_DIRECT_URL when set) for work that needs a session;
    otherwise to DATABASE_URL, with prepared statements off behind a pooler. Raises
    `psycopg.OperationalError` when the server cannot be reached within 5 s."""
    url = settings.session_url if session else settings.database_url
    if timeouts:
        kwargs = connect_kwargs(settings, role)
    else:
        kwargs = {
            "autocommit": True,
            "connect_timeout": 5,
            "application_name": application_name(role, settings.hostname),
        }
        if settings.pooled and url == settings.database_url:
            kwargs["prepare_threshold"] = None
    return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]


class TimeoutsCheck:
    """Behind PgBouncer, the pools' timeouts are the role's defaults (see `connect_kwargs`):
    check them on each new pooled connection, and warn once per process when the server
    connection it landed on runs without them (never migrated behind the pooler, or a server
    connection older than the last `settle migrate`). A warning, not a refusal: the service
    works, only unbounded."""

    def __init__(self, timeouts: Iterable[tuple[str, int]]) -> None:
        self._want = {name: f"{value}ms" for name, value in timeouts}
        self._warned = False

    def __call__(self, conn: psycopg.Connection) -> None:
        if self._warned:
            return
        names = list(self._want)
        row = conn.execute(
            "SELECT current_setting(%s), current_setting(%s), current_setting(%s)", names
        ).fetchone()
        assert row is not None
        # Postgres shows "5s" for 5000ms: compare in milliseconds.
        have = {name: _milliseconds(str(value)) for name, value in zip(names, row, strict=True)}
        wrong = {n: v for n, v in have.items() if v != _milliseconds(self._want[n])}
        if wrong:
            self._warned = True
            log.warning(
                "behind PgBouncer, a server connection runs with %s instead of %s: run"
                " `settle migrate` with DB_POOLER=pgbouncer, then RECONNECT on PgBouncer's"
                " admin console",
                ", ".join(f"{n}={v}ms" for n, v in wrong.items()),
                ", ".join(f"{n}={_milliseconds(self._want[n])}ms" for n in wrong),
            )


def _milliseconds(shown: str) -> int:
    """A duration as Postgres shows it ("0", "250ms", "5s", "2min", "1h", "1d") in ms."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    digits = shown.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits) * units.get(shown[len(digits) :], 1)


def create_pool(
    settings: Settings, role: str, *, size: int, timeout: float | None = None
) -> ElasticPool:
    """A closed pool of `size` connections for this process (its share of the budget).

    Open it with `pool.open(wait=True, timeout=...)` after any fork; that raises
    `PoolTimeout` when Postgres cannot be reached. `timeout` (default POOL_TIMEOUT) is how
    long a borrower waits for a free connection.
    """
    return ElasticPool(
        settings.database_url,
        kwargs=connect_kwargs(settings, role),
        configure=TimeoutsCheck(pool_timeouts(settings)) if settings.pooled else None,
        min_size=size,
        max_size=size,
        open=False,
        name=f"settle-{role}",
        timeout=settings.pool_timeout if timeout is None else timeout,
        reconnect_timeout=60.0,
    )


@contextlib.contextmanager
def connection(
    pool: ConnectionPool, *, timeout: float | None = None
) -> Iterator[psycopg.Connection]:
    """Borrow a connection, translating failures into domain errors.

    Raises `DatabaseBusy` when none frees up within `timeout` (default: the pool's), and
    `DatabaseUnavailable` when Postgres drops or refuses the connection; in the latter case
    the pool is asked to check its idle connections, since it does not probe them itself and
    after a Postgres restart every one of them is dead. A transaction the server cancelled on
    a healthy connection (deadlock, serialization failure, lock or statement timeout) is not
    an outage: that error propagates as it is, for the caller's retry policy.
    """
    try:
        with pool.connection(timeout=timeout) as conn:
            yield conn
    except PoolTimeout:
        raise DatabaseBusy("no database connection became free in time") from None
    except psycopg.OperationalError as exc:
        if not connection_lost(exc):
            raise
        log.warning("database connection failed (%s); checking the pool", exc)
        pool.check()
        raise DatabaseUnavailable("the database is unreachable") from exc


def connection_lost(exc: psycopg.Error) -> bool:
    """Whether `exc` means the connection itself failed, rather than only its transaction."""
    # No SQLSTATE: the client lost the server. Class 08: connection exception; 57P0x: the
    # server is shutting down, or the backend was terminated.
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def check_postgres(url: str, *, name: str = "settle:check", timeout: float = 5.0) -> None:
    """Boot check: `SELECT 1` on a fresh connection named `name` in pg_stat_activity.
    Raises `DependencyDown` with one line."""
    try:
        with psycopg.connect(
            url, connect_timeout=max(1, int(timeout)), autocommit=True, application_name=name
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise DependencyDown(f"Postgres unreachable at {redact(url)}: {first_line(exc)}") from None


#: A password given as `password=...` (a key=value conninfo, or a URL's query string).
_PASSWORD_PARAMETER = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)")


def redact(url: str) -> str:
    """The URL (or key=value connection string) with any password replaced by `***`, for
    log lines and the start banner; a URL without a password is shown as it is."""
    shown = _PASSWORD_PARAMETER.sub(r"\1***", url)
    if "@" not in shown or "://" not in shown:
        return shown
    scheme, rest = shown.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user, _, password = creds.partition(":")
    return f"{scheme}://{user}:***@{host}" if password else shown
