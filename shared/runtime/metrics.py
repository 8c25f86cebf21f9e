"""The Prometheus series every process shares, and what a scrape adds from the database.

Import this only after the process root called `shared.runtime.multiproc.prepare` (or in a
single process, as the tests do): prometheus-client picks its storage on first import.

- Pool series (`settle_db_pool_*{role}`), written by each process from psycopg_pool's
  `get_stats()` once a second (`Publisher`): gauges are summed over live processes
  (`livesum`), the cumulative wait time and lost connections are counters, so the totals of
  processes that exited still count. `get_stats()` leaves out counters still at zero, and
  `pop_stats()` would reset them under other readers, so each process keeps the last value
  it saw and adds the difference.
- Database-wide series (transfers by status, the oldest pending transfer, the connection
  budget, what is planned and leased of it, the live processes per role) and the broker's
  queues are not per process: `OverviewCollector` reads them in the scraped process at
  scrape time, once, and they are never added up across processes. Capacity (the budget)
  and its use (planned, leased) are separate series: one series never mixes the two.
- `settle_build_info`, from the scraped process at scrape time: the version it runs.
  A scrape waits at most `SCRAPE_POOL_TIMEOUT` for a pooled connection and gives each query
  `SCRAPE_STATEMENT_TIMEOUT_MS`; when either runs out it answers without those series and
  counts the miss in `settle_metrics_scrape_errors_total`.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared.broker.base import QueueCounts
from shared.broker.messages import QUEUES
from shared.config import Settings
from shared.db.budget import BudgetExceeded, capacity_on, make_plan
from shared.db.pool import connection
from shared.errors import BrokerUnavailable, SettleError
from shared.ledger import vitals
from shared.runtime import multiproc
from shared.runtime.supervisor import on_restart, on_unreachable

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A scrape never waits longer than this for a pooled connection (it answers without the
#: database-wide series instead), nor lets a query run longer than this.
SCRAPE_POOL_TIMEOUT = 0.25
SCRAPE_STATEMENT_TIMEOUT_MS = 1000

#: Seconds between two readings of a process's pool (and waitress queue).
PUBLISH_INTERVAL = 1.0
#: Seconds between two warnings that requests wait for a web thread (per process).
QUEUE_WARNING_INTERVAL = 60.0

POOL_SIZE = Gauge(
    "settle_db_pool_size",
    "Connections the pools of this role hold or are opening (live processes)",
    ["role"],
    multiprocess_mode="livesum",
)
POOL_AVAILABLE = Gauge(
    "settle_db_pool_available",
    "Idle connections in the pools of this role (live processes)",
    ["role"],
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "settle_db_pool_requests_waiting",
    "Borrowers waiting for a connection in the pools of this role (live processes)",
    ["role"],
    multiprocess_mode="livesum",
)
POOL_WAIT = Counter(
    "settle_db_pool_wait_seconds",
    "Time borrowers of this role spent waiting for a pooled connection",
    ["role"],
)
POOL_LOST = Counter(
    "settle_db_pool_connections_lost",
    "Pooled connections of this role found broken",
    ["role"],
)
WEB_QUEUE = Gauge(
    "settle_web_queue_depth",
    "Requests accepted by waitress and waiting for a thread (live web processes)",
    multiprocess_mode="livesum",
)
PROCESS_RESTARTS = Counter(
    "settle_process_restarts",
    "Child processes a supervisor started again after they died (web processes, a dramatiq"
    " worker set, the sweeping process), by role",
    ["role"],
)
DEPENDENCY_UNREACHABLE = Counter(
    "settle_dependency_unreachable",
    "Boot attempts that found Postgres or the broker unreachable (a supervisor's own, and its"
    " children's, which it then started again), by role",
    ["role"],
)
SCRAPE_ERRORS = Counter(
    "settle_metrics_scrape_errors",
    "Scrapes that answered without some series (pool busy, query too slow, broker down)",
    ["source"],
)


def count_restarts(role: str) -> None:
    """Count every restart the supervisor of this process makes in `PROCESS_RESTARTS`, and
    every boot attempt that found a dependency unreachable in `DEPENDENCY_UNREACHABLE`
    (both present at zero for `role` from the start)."""
    PROCESS_RESTARTS.labels(role=role)
    DEPENDENCY_UNREACHABLE.labels(role=role)
    on_restart(lambda role, cause: PROCESS_RESTARTS.labels(role=role).inc())
    on_unreachable(lambda role: DEPENDENCY_UNREACHABLE.labels(role=role).inc())


class PoolStats:
    """Copies one pool's `get_stats()` into the pool series of `role`."""

    def __init__(self, pool: Any, role: str) -> None:
        self._pool = pool
        self._role = role
        self._wait_ms = 0
        self._lost = 0
        # Present from the start, at zero: get_stats() leaves out counters still at zero.
        POOL_WAIT.labels(role)
        POOL_LOST.labels(role)

    def publish(self) -> None:
        stats = self._pool.get_stats()
        POOL_SIZE.labels(self._role).set(stats.get("pool_size", 0))
        POOL_AVAILABLE.labels(self._role).set(stats.get("pool_available", 0))
        POOL_WAITING.labels(self._role).set(stats.get("requests_waiting", 0))
        wait_ms = int(stats.get("requests_wait_ms", 0))
        lost = int(stats.get("connections_lost", 0))
        if wait_ms > self._wait_ms:
            POOL_WAIT.labels(self._role).inc((wait_ms - self._wait_ms) / 1000.0)
        if lost > self._lost:
            POOL_LOST.labels(self._role).inc(lost - self._lost)
        self._wait_ms, self._lost = wait_ms, lost

    def clear(self) -> None:
        """Zero this process's gauges (its pool is closed)."""
        for gauge in (POOL_SIZE, POOL_AVAILABLE, POOL_WAITING):
            gauge.labels(self._role).set(0)


class Publisher:
    """A daemon thread that calls each of `sources` every `interval` seconds until `stop()`.
    A source that fails is logged once per failure streak and tried again next time."""

    def __init__(self, sources: Iterable[Callable[[], None]], *, interval: float) -> None:
        self._sources = list(sources)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def publish(self) -> None:
        for source in self._sources:
            source()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.publish()
                failing = False
            except Exception as exc:  # a closed pool mid-shutdown; the next turn tries again
                if not failing:
                    log.warning("could not publish process metrics: %s", exc)
                failing = True
            self._stop.wait(self._interval)


class QueueDepth:
    """Copies the number of requests waiting for a thread into `settle_web_queue_depth`, and
    logs a warning when some wait, at most once per `interval` seconds (the line counts the
    readings that found a queue since the last one). Waitress's own per-request warning is
    off (`shared.runtime.logs.configure`)."""

    def __init__(
        self,
        depth: Callable[[], int],
        *,
        interval: float = QUEUE_WARNING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._depth = depth
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._queued_readings = 0

    def publish(self) -> None:
        depth = self._depth()
        WEB_QUEUE.set(depth)
        if depth <= 0:
            return
        self._queued_readings += 1
        now = self._clock()
        if now < self._next:
            return
        log.warning(
            "%d request(s) waiting for a web thread (%d reading(s) found a queue in the last"
            " %.0fs); see settle_web_queue_depth",
            depth,
            self._queued_readings,
            self._interval,
        )
        self._next, self._queued_readings = now + self._interval, 0


def publish_pool(
    pool: Any, role: str, *, queue_depth: Callable[[], int] | None = None
) -> Publisher:
    """Start publishing `pool`'s stats (and the waitress queue depth, for web) from this
    process every `PUBLISH_INTERVAL` seconds; `stop()` the result before closing the pool."""
    stats = PoolStats(pool, role)
    sources: list[Callable[[], None]] = [stats.publish]
    if queue_depth is not None:
        sources.append(QueueDepth(queue_depth).publish)
    publisher = Publisher(sources, interval=PUBLISH_INTERVAL)
    publisher.publish()
    return publisher.start()


class OverviewCollector(Collector):
    """Database-wide and broker series, read by the scraped process at scrape time."""

    def __init__(
        self,
        settings: Settings,
        pool: Any,
        *,
        queue_counts: QueueCounts | None,
        queues: tuple[str, ...] = QUEUES,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._queue_counts = queue_counts
        self._queues = queues

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._queue_series()
        yield from self._database_series()

    def _queue_series(self) -> Iterator[Metric]:
        if self._queue_counts is None:
            return
        family = GaugeMetricFamily(
            "settle_queue_messages",
            "Messages in the broker per queue and state",
            labels=["queue", "state"],
        )
        try:
            for queue in self._queues:
                counts = self._queue_counts(queue)
                for state, count in counts.items():
                    family.add_metric([queue, state], count)
        except BrokerUnavailable as exc:  # the broker is down or slow: answer with the rest
            log.warning("metrics: could not read the broker's queues: %s", exc.message)
            SCRAPE_ERRORS.labels("broker").inc()
            return
        yield family

    def _database_series(self) -> Iterator[Metric]:
        try:
            with (
                connection(self._pool, timeout=SCRAPE_POOL_TIMEOUT) as conn,
                conn.transaction(),
            ):
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (str(SCRAPE_STATEMENT_TIMEOUT_MS),),
                )
                counts = vitals.transfer_counts(conn)
                oldest = vitals.oldest_pending_age(conn)
                leases = vitals.leases(conn, self._settings.lease_ttl_seconds)
                cap = capacity_on(conn, self._settings)
        except (SettleError, psycopg.Error) as exc:
            log.warning("metrics: database series left out of this scrape: %s", exc)
            SCRAPE_ERRORS.labels("database").inc()
            return
        transfers = GaugeMetricFamily(
            "settle_transfers",
            "Transfers per status (settled and failed are estimates past"
            f" {vitals.EXACT_COUNT_LIMIT} transfers)",
            labels=["status"],
        )
        for status, count in counts.by_status.items():
            transfers.add_metric([status], count)
        yield transfers
        dead = GaugeMetricFamily(
            "settle_transfers_dead_lettered", "Pending transfers whose retries ran out"
        )
        dead.add_metric([], counts.dead_lettered)
        yield dead
        age = GaugeMetricFamily(
            "settle_oldest_pending_transfer_age_seconds",
            "Age of the oldest pending transfer (0 when none is pending)",
        )
        age.add_metric([], oldest)
        yield age
        budget = GaugeMetricFamily(
            "settle_connection_budget",
            "Postgres connections the whole service may hold (the smallest budget a live lease"
            " was given, else the one these settings read)",
        )
        budget.add_metric([], leases.budget if leases.budget is not None else cap.available)
        yield budget
        # A plan that does not fit plans nothing (its processes refuse to start).
        with contextlib.suppress(BudgetExceeded):
            plan = make_plan(self._settings, cap)
            planned = GaugeMetricFamily(
                "settle_connections_planned",
                "Postgres connections the plan of these settings gives each role",
                labels=["role"],
            )
            for role_plan in plan.roles:
                planned.add_metric([role_plan.role], role_plan.total)
            yield planned
        leased = GaugeMetricFamily(
            "settle_connections_leased",
            "Postgres connections granted to the live leases of each role now",
            labels=["role"],
        )
        processes = GaugeMetricFamily(
            "settle_processes",
            "Live processes of each role on every host (those holding a live connection lease)",
            labels=["role"],
        )
        for role in ROLES:
            leased.add_metric([role], leases.granted.get(role, 0))
            processes.add_metric([role], leases.processes.get(role, 0))
        yield leased
        yield processes


#: The roles whose processes hold connection leases.
ROLES = ("web", "worker", "webhooks", "sweeper")


def settle_version() -> str:
    """This distribution's version, or "unknown" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("settle")
    except PackageNotFoundError:
        return "unknown"


class BuildInfo(Collector):
    """`settle_build_info{version,python}` = 1: what the scraped process runs."""

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "settle_build_info",
            "The Settle version and Python the scraped process runs (always 1)",
            labels=["version", "python"],
        )
        info.add_metric([settle_version(), platform.python_version()], 1)
        return [info]


class _HostFiles(Collector):
    """Every process's series on this host, from their files, added up by mode."""

    def collect(self) -> Iterable[Metric]:
        multiproc.forget_dead()
        return MultiProcessCollector.merge(multiproc.files(), accumulate=True)


def render(overview_collector: OverviewCollector) -> bytes:
    """The exposition text: this host's processes (or this process alone when no root set
    up files) and the overview read now."""
    if multiproc.enabled():
        processes = CollectorRegistry(auto_describe=False)
        processes.register(_HostFiles())
        own = generate_latest(processes)
    else:
        own = generate_latest(REGISTRY)
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(BuildInfo())
    scraped.register(overview_collector)
    return own + generate_latest(scraped)
