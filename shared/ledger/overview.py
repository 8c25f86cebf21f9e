"""The database side of the dashboard's overview beyond the vital signs (`vitals.py`, which
`/metrics` and `settle status` read too): the last hour per minute, the processes alive with
their connections, and the connection budget per role. The broker side (queue depths) is
the caller's to add; see `web.dashboard`.

Each function reads on the connection it is given, with queries served by indexes where the
table grows (the last hour's outcomes), and raises only driver errors.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from shared.config import Settings
from shared.db import Row
from shared.db.activity import ROLES, connections_by_role
from shared.db.budget import BudgetExceeded, Capacity, capacity_on, make_plan


def last_hour(conn: psycopg.Connection, *, since: datetime.datetime | None = None) -> list[Row]:
    """One row per minute of the last hour (oldest first, empty minutes included, the
    current one last), from `since` on when given: `minute`, `settled`, `failed`, and the
    accepted -> settled latency of the transfers settled in it, `p50_ms` and `p99_ms` (None
    when none settled). Reads the rows finished in those minutes (index on finished_at), so
    callers that keep completed minutes ask only for the last ones."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "WITH bounds AS (SELECT greatest(date_trunc('minute', now()) - interval"
            " '59 minutes', coalesce(%s::timestamptz, '-infinity')) AS first,"
            " date_trunc('minute', now()) AS last),"
            " minutes AS (SELECT generate_series(first, last, interval '1 minute') AS minute"
            " FROM bounds),"
            " done AS (SELECT date_trunc('minute', finished_at) AS minute, status,"
            " extract(epoch FROM settled_at - created_at) * 1000 AS latency_ms FROM transfers"
            " WHERE finished_at >= (SELECT first FROM bounds))"
            " SELECT m.minute, count(d.status) FILTER (WHERE d.status = 'settled') AS settled,"
            " count(d.status) FILTER (WHERE d.status = 'failed') AS failed,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY d.latency_ms)"
            " FILTER (WHERE d.status = 'settled') AS p50_ms,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d.latency_ms)"
            " FILTER (WHERE d.status = 'settled') AS p99_ms"
            " FROM minutes m LEFT JOIN done d ON d.minute = m.minute"
            " GROUP BY m.minute ORDER BY m.minute",
            (since,),
        )
        return cur.fetchall()


def workers_alive(conn: psycopg.Connection, *, ttl_seconds: float) -> list[Row]:
    """The processes holding a live lease (heartbeat within `ttl_seconds`), oldest first:
    holder (its application_name), role, wanted, granted, acquired_at, heartbeat_at, and
    from pg_stat_activity the connections it holds (`connected`) and how many of them are
    running a statement (`busy`)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT l.holder, l.role, l.wanted, l.granted, l.acquired_at, l.heartbeat_at,"
            " count(a.pid) AS connected, count(a.pid) FILTER (WHERE a.state = 'active') AS busy"
            " FROM connection_leases l"
            " LEFT JOIN pg_stat_activity a ON a.application_name = l.holder"
            " AND a.datname = current_database()"
            " WHERE l.heartbeat_at >= now() - make_interval(secs => %s)"
            " GROUP BY l.holder ORDER BY l.acquired_at, l.holder",
            (ttl_seconds,),
        )
        return cur.fetchall()


@dataclass(frozen=True)
class BudgetUse:
    """The connection budget per role: what the plan gives (None when the configured plan
    does not fit, `refusal` saying why), what live leases are granted, and what
    pg_stat_activity shows connected."""

    capacity: Capacity
    planned: dict[str, int | None]
    leased: dict[str, int]
    connected: dict[str, int]
    refusal: str | None = None
    roles: tuple[str, ...] = field(default=ROLES)


def budget_use(conn: psycopg.Connection, settings: Settings, database: str) -> BudgetUse:
    """Plan vs live leases vs `pg_stat_activity` for each role of the service on `database`."""
    cap = capacity_on(conn, settings)
    planned: dict[str, int | None] = dict.fromkeys(ROLES)
    refusal = None
    try:
        plan = make_plan(settings, cap)
        planned = {role.role: role.total for role in plan.roles}
    except BudgetExceeded as exc:
        refusal = exc.message
    leased: Counter[str] = Counter()
    for lease in workers_alive(conn, ttl_seconds=settings.lease_ttl_seconds):
        leased[lease["role"]] += int(lease["granted"])
    connected = connections_by_role(conn, database, include_self=True)
    return BudgetUse(
        capacity=cap,
        planned=planned,
        leased={role: leased[role] for role in ROLES},
        connected={role: connected[role] for role in ROLES},
        refusal=refusal,
    )
