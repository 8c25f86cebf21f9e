"""The connection budget: how many Postgres connections each process's pool may hold.

The budget is DB_CONNECTION_BUDGET when given, else what the server allows
(max_connections - superuser_reserved_connections - reserved_connections on PG16+) minus
DB_RESERVED_CONNECTIONS for operators, migrations and monitoring. The sweeper takes two
connections (one sweeps, one dispatches webhook deliveries); workers take one per thread (a
worker thread without a connection only waits); web gets one per thread when that fits, else
the rest split evenly, but at least one per process. With WEB_SHARE set and not enough for
everyone, web gets that share and workers the rest (and run that many threads). Each web
process also holds one connection for its event watch (the `events` role), which wakes
long-polls when new events exist, unless EVENT_WAITERS=0. Each webhook delivery process (the
`webhooks` role, WEBHOOK_PROCESSES per worker instance) takes WEBHOOK_POOL_SIZE (at most
WEBHOOK_THREADS): its threads hold no connection while they wait on a receiver. A plan that
does not fit raises `BudgetExceeded` with the arithmetic on one line.

Behind PgBouncer (DB_POOLER=pgbouncer) there are two sides. What Settle's processes may hold
is PgBouncer's client limit (DB_POOLER_CLIENT_LIMIT, else read from its admin console at
DB_POOLER_ADMIN_URL, else its default max_client_conn) minus DB_RESERVED_CONNECTIONS, split as
above; what Postgres sees is PgBouncer's pool (DB_POOLER_POOL_SIZE, else read likewise, else
its default default_pool_size), which must fit the Postgres budget (DB_CONNECTION_BUDGET,
else read from the server as above). A plan must fit both.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shared.config.settings import PGBOUNCER_CLIENT_LIMIT, PGBOUNCER_POOL_SIZE, Settings
from shared.db.pool import connect_once
from shared.errors import SettleError
from shared.text_table import text_table


class BudgetExceeded(SettleError):
    """Raised when the configured processes need more connections than the budget allows."""

    code = "budget_exceeded"


@dataclass(frozen=True)
class Capacity:
    """Connections the application's processes may hold, and where that number comes from;
    behind a pooler, also the pooler's side (`pooler`)."""

    available: int
    source: str
    pooler: PoolerSide | None = None


@dataclass(frozen=True)
class PoolerSide:
    """Behind a pooler: the server connections it may open, and what Postgres allows."""

    pool_size: int
    pool_source: str
    server: Capacity


def capacity_from_server(conn: psycopg.Connection, reserved: int) -> Capacity:
    """Read max_connections and the reserved slots from the server `conn` is connected to."""
    row = conn.execute(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " coalesce(current_setting('reserved_connections', true), '0')::int"
    ).fetchone()
    assert row is not None
    max_connections, superuser, pg_reserved = row
    parts = [f"max_connections {max_connections}", f"{superuser} superuser"]
    if pg_reserved:
        parts.append(f"{pg_reserved} reserved_connections")
    parts.append(f"{reserved} reserved")
    available = max_connections - superuser - pg_reserved - reserved
    return Capacity(available, " - ".join(parts))


def capacity(settings: Settings) -> Capacity:
    """The budget: DB_CONNECTION_BUDGET, or else read from Postgres (which may raise
    `psycopg.OperationalError` when it cannot be reached). Behind a pooler, the client side
    with the pooler's side attached (see the module's docstring)."""
    if settings.db_connection_budget is not None:
        return _pooled(settings, Capacity(settings.db_connection_budget, "DB_CONNECTION_BUDGET"))
    with connect_once(settings, "budget", session=True) as conn:
        return capacity_on(conn, settings)


def capacity_on(conn: psycopg.Connection, settings: Settings) -> Capacity:
    """`capacity`, reading Postgres's side over `conn` (a connection already held: the
    dashboard's, a scrape's, `settle status`'s) rather than a new one. Behind a pooler the
    same two sides as `capacity`: a query over PgBouncer reaches Postgres's settings."""
    if settings.db_connection_budget is not None:
        server = Capacity(settings.db_connection_budget, "DB_CONNECTION_BUDGET")
    else:
        server = capacity_from_server(conn, settings.db_reserved_connections)
    return _pooled(settings, server)


def _pooled(settings: Settings, server: Capacity) -> Capacity:
    """`server` alone without a pooler; behind one, its client side with `server` attached."""
    if not settings.pooled:
        return server
    reserved = settings.db_reserved_connections
    limit, limit_source, size, size_source = pooler_limits(settings)
    return Capacity(
        limit - reserved,
        f"{limit_source} {limit} - {reserved} reserved",
        PoolerSide(size, size_source, server),
    )


def pooler_limits(settings: Settings) -> tuple[int, str, int, str]:
    """(client limit, its source, pool size, its source) of PgBouncer: the settings when
    given, else read from its admin console (DB_POOLER_ADMIN_URL) when given, else
    PgBouncer's own defaults. Raises `psycopg.Error` when the admin console cannot be read."""
    limit, limit_source = settings.db_pooler_client_limit, "DB_POOLER_CLIENT_LIMIT"
    size, size_source = settings.db_pooler_pool_size, "DB_POOLER_POOL_SIZE"
    if (limit is None or size is None) and settings.db_pooler_admin_url:
        console_limit, console_size = read_pgbouncer(
            settings.db_pooler_admin_url,
            str(conninfo_to_dict(settings.database_url).get("dbname", "")),
        )
        if limit is None:
            limit, limit_source = console_limit, "PgBouncer's max_client_conn"
        if size is None:
            size, size_source = console_size, "PgBouncer's pool for the database"
    if limit is None:
        limit, limit_source = PGBOUNCER_CLIENT_LIMIT, "PgBouncer's default max_client_conn"
    if size is None:
        size, size_source = PGBOUNCER_POOL_SIZE, "PgBouncer's default default_pool_size"
    return limit, limit_source, size, size_source


def read_pgbouncer(admin_url: str, dbname: str) -> tuple[int, int]:
    """(max_client_conn, server connections it may open for `dbname`: its pool plus reserve)
    from PgBouncer's admin console (`SHOW CONFIG`, `SHOW DATABASES`); a database PgBouncer
    has not listed yet (a `*` entry makes it on first use) gets the default pool size."""
    with psycopg.connect(
        admin_url, autocommit=True, connect_timeout=5, prepare_threshold=None
    ) as conn:
        config = {str(row[0]): str(row[1]) for row in conn.execute("SHOW CONFIG").fetchall()}
        cur = conn.execute("SHOW DATABASES")
        names = [column.name for column in cur.description or []]
        databases = {str(row[0]): dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    entry = databases.get(dbname)
    if entry is not None:
        size = int(entry["pool_size"]) + int(entry["reserve_pool"] or 0)
    else:
        size = int(config["default_pool_size"]) + int(config.get("reserve_pool_size", "0"))
    return int(config["max_client_conn"]), size


@dataclass(frozen=True)
class RolePlan:
    role: str
    instances: int
    processes: int  # per instance
    threads: int  # per process, as configured
    pool_size: int  # connections per process

    @property
    def total(self) -> int:
        return self.instances * self.processes * self.pool_size


@dataclass(frozen=True)
class Plan:
    capacity: Capacity
    web: RolePlan
    worker: RolePlan
    sweeper: RolePlan
    events: RolePlan  # each web process's event watch
    webhooks: RolePlan  # the webhook delivery processes

    @property
    def roles(self) -> tuple[RolePlan, ...]:
        return (self.web, self.events, self.worker, self.webhooks, self.sweeper)

    @property
    def total(self) -> int:
        return sum(role.total for role in self.roles)

    @property
    def headroom(self) -> int:
        return self.capacity.available - self.total

    def table(self) -> str:
        """The plan as a table, one row per role, then the total and the headroom."""
        header = ("role", "instances", "processes", "threads", "pool", "total")
        rows = [
            (
                r.role,
                str(r.instances),
                str(r.processes),
                str(r.threads),
                str(r.pool_size),
                str(r.total),
            )
            for r in self.roles
        ]
        lines = text_table([header, *rows], right=range(1, len(header)))
        lines.append(
            f"total {self.total} of {self.capacity.available} available"
            f" ({self.capacity.source}); headroom {self.headroom}"
        )
        pooler = self.capacity.pooler
        if pooler is not None:
            server = pooler.server
            lines.append(
                f"pgbouncer: {self.total} client connections -> a pool of {pooler.pool_size}"
                f" server connections ({pooler.pool_source})"
            )
            lines.append(
                f"postgres: {pooler.pool_size} of {server.available} available"
                f" ({server.source}); headroom {server.available - pooler.pool_size}"
            )
        return "\n".join(lines)


def _events_each(settings: Settings) -> int:
    """The connections of one web process's event watch: 1, or 0 with waiting turned off."""
    return 1 if settings.waiters > 0 else 0


def _webhooks_each(settings: Settings) -> int:
    """The connections of one webhook delivery process."""
    return min(settings.webhook_pool_size, settings.webhook_threads)


#: The sweeper's connections: one sweeps, one dispatches webhook deliveries.
SWEEPER_CONNECTIONS = 2


def _refusal(settings: Settings, web_each: int, worker_each: int, cap: Capacity) -> str:
    web_n = settings.web_instances * settings.web_processes
    worker_n = settings.worker_instances * settings.worker_processes
    hooks_n = settings.worker_instances * settings.webhook_processes
    events = web_n * _events_each(settings)
    hooks = hooks_n * _webhooks_each(settings)
    need = web_n * web_each + worker_n * worker_each + events + hooks + SWEEPER_CONNECTIONS
    watches = f" + {events} event watches" if events else ""
    webhooks = f" + {hooks_n} webhook x {_webhooks_each(settings)}" if hooks else ""
    return (
        f"budget: {worker_n} worker processes x {worker_each} threads"
        f" + {web_n} web x {web_each}{watches}{webhooks} + {SWEEPER_CONNECTIONS} sweeper"
        f" = {need} > {cap.available} available ({cap.source})"
    )


def make_plan(settings: Settings, cap: Capacity) -> Plan:
    """Split `cap` between the roles. Raises `BudgetExceeded` when it cannot be done."""
    web_n = settings.web_instances * settings.web_processes
    worker_n = settings.worker_instances * settings.worker_processes
    web_want = min(settings.web_pool_size or settings.web_threads, settings.web_threads)
    worker_want = settings.worker_threads
    events_each = _events_each(settings)
    hooks_n = settings.worker_instances * settings.webhook_processes
    # The sweeper's, the event watches', the webhook processes'.
    room = (
        cap.available
        - SWEEPER_CONNECTIONS
        - web_n * events_each
        - hooks_n * _webhooks_each(settings)
    )

    if web_n * web_want + worker_n * worker_want <= room:
        web_pool, worker_pool = web_want, worker_want
    elif settings.web_share is not None:
        web_pool = max(1, min(web_want, int(room * settings.web_share) // web_n))
        worker_pool = min(worker_want, (room - web_n * web_pool) // worker_n)
        if worker_pool < 1:
            raise BudgetExceeded(_refusal(settings, web_pool, 1, cap))
    else:
        worker_pool = worker_want
        web_pool = min(web_want, (room - worker_n * worker_pool) // web_n)
        if web_pool < 1:
            raise BudgetExceeded(_refusal(settings, 1, worker_want, cap))

    pooler = cap.pooler
    if pooler is not None and pooler.pool_size > pooler.server.available:
        raise BudgetExceeded(
            f"budget: PgBouncer's pool of {pooler.pool_size} server connections"
            f" ({pooler.pool_source}) > {pooler.server.available} available"
            f" ({pooler.server.source})"
        )

    return Plan(
        capacity=cap,
        web=RolePlan(
            "web", settings.web_instances, settings.web_processes, settings.web_threads, web_pool
        ),
        worker=RolePlan(
            "worker",
            settings.worker_instances,
            settings.worker_processes,
            settings.worker_threads,
            worker_pool,
        ),
        sweeper=RolePlan("sweeper", 1, 1, SWEEPER_CONNECTIONS, SWEEPER_CONNECTIONS),
        webhooks=RolePlan(
            "webhooks",
            settings.worker_instances,
            settings.webhook_processes,
            settings.webhook_threads,
            _webhooks_each(settings),
        ),
        events=RolePlan("events", settings.web_instances, settings.web_processes, 1, events_each),
    )
