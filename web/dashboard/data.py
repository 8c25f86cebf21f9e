"""What the overview shows, gathered once for the page and its JSON twin: the database side
from `shared.ledger.overview`, the broker side from the function the app was given."""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.broker.messages import TRANSFER_QUEUE
from shared.config import Settings
from shared.db import Row
from shared.db.pool import connection
from shared.errors import BrokerUnavailable
from shared.ledger import dead_letters, overview, vitals

log = logging.getLogger(__name__)

#: Message counts of the transfers queue: ready, delayed, in_flight, dead.
QueueDepths = Callable[[], Mapping[str, int]]
#: Drops the dead-letter messages none of whose transfers is dead-lettered any more (after
#: a retry or a cancel); returns how many.
ClearDead = Callable[[], int]


def broker_functions(
    broker: SettleBroker | None, pool: ConnectionPool
) -> tuple[QueueDepths | None, ClearDead | None]:
    """The two things the dashboard asks the broker's queues, whichever broker it is (None:
    no queue numbers, and dead letters left to expire). Each raises `BrokerUnavailable`."""
    if broker is None:
        return None, None
    return (
        functools.partial(broker.depths, TRANSFER_QUEUE),
        functools.partial(
            broker.drop_cleared_dead_letters,
            dead_letters.still_dead_lettered_in(pool),
            TRANSFER_QUEUE,
        ),
    )


#: Minutes this recent are read again on every refresh: a transfer that finished in one may
#: commit a little after it ended.
_RECENT = datetime.timedelta(minutes=2)


class LastHour:
    """The last hour's per-minute figures, keeping the minutes that are over: a refresh reads
    only the rows of the last two minutes rather than the whole hour's. One per process."""

    def __init__(self) -> None:
        self._kept: dict[datetime.datetime, Row] = {}
        self._lock = threading.Lock()

    def rows(self, conn: psycopg.Connection) -> list[Row]:
        row = conn.execute("SELECT date_trunc('minute', now())").fetchone()
        assert row is not None
        now_minute: datetime.datetime = row[0]
        first = now_minute - datetime.timedelta(minutes=59)
        settled_before = now_minute - _RECENT
        with self._lock:
            kept = {m: r for m, r in self._kept.items() if m >= first}
        since = first
        while since < settled_before and since in kept:
            since += datetime.timedelta(minutes=1)
        fresh = overview.last_hour(conn, since=since)
        with self._lock:
            self._kept = {**kept, **{r["minute"]: r for r in fresh if r["minute"] < settled_before}}
        merged = {**kept, **{r["minute"]: r for r in fresh}}
        return [merged[m] for m in sorted(merged) if m >= first]


class OverviewSource:
    """Gathers the overview for the page and its JSON twin, sharing one `LastHour`."""

    def __init__(
        self, pool: ConnectionPool, settings: Settings, queue_depths: QueueDepths | None
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._queue_depths = queue_depths
        self._last_hour = LastHour()

    def gather(self) -> dict[str, Any]:
        return gather(self._pool, self._settings, self._queue_depths, self._last_hour)


def gather(
    pool: ConnectionPool,
    settings: Settings,
    queue_depths: QueueDepths | None,
    last_hour: LastHour,
) -> dict[str, Any]:
    """The overview as plain data (JSON-ready but for timestamps)."""
    with connection(pool) as conn:
        database = str(conn.info.dbname)
        counts = vitals.transfer_counts(conn)
        oldest = vitals.oldest_pending_age(conn)
        minutes = last_hour.rows(conn)
        workers = overview.workers_alive(conn, ttl_seconds=settings.lease_ttl_seconds)
        budget = overview.budget_use(conn, settings, database)
    queues: dict[str, int] | None = None
    queue_error = None
    if queue_depths is None:
        queue_error = "this web process has no broker client to ask"
    else:
        try:
            queues = dict(queue_depths())
        except BrokerUnavailable as exc:
            log.warning("dashboard: %s", exc.message)
            queue_error = "the message broker is unavailable"
    return {
        "queues": queues,
        "queue_error": queue_error,
        "transfers": {**counts.by_status, "dead_lettered": counts.dead_lettered},
        # False on a large ledger: settled and failed are then Postgres's estimates.
        "transfers_exact": counts.exact,
        "oldest_pending_seconds": oldest,
        "last_hour": [
            {
                "minute": row["minute"],
                "settled": int(row["settled"]),
                "failed": int(row["failed"]),
                "p50_ms": None if row["p50_ms"] is None else round(float(row["p50_ms"]), 1),
                "p99_ms": None if row["p99_ms"] is None else round(float(row["p99_ms"]), 1),
            }
            for row in minutes
        ],
        "workers": [
            {
                k: row[k]
                for k in (
                    "holder",
                    "role",
                    "wanted",
                    "granted",
                    "connected",
                    "busy",
                    "acquired_at",
                    "heartbeat_at",
                )
            }
            for row in workers
        ],
        "budget": {
            "available": budget.capacity.available,
            "source": budget.capacity.source,
            "refusal": budget.refusal,
            "roles": [
                {
                    "role": role,
                    "planned": budget.planned[role],
                    "leased": budget.leased[role],
                    "connected": budget.connected[role],
                }
                for role in budget.roles
            ],
        },
    }
