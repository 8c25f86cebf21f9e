"""A dependency down for 20 s with the dramatiq master killed inside the outage, on servers
of the test's own: Postgres (an embedded one), and the broker (a Valkey, or a RabbitMQ
node). A failover or a broker restart takes that long in production, and a crash inside
the window is ordinary.

Throughout, under a load of transfers: `/healthz` answers 200 (web is never stopped because
a worker cannot start), POST /transfers answers only 202 or 503; `settle worker` restarts
dramatiq for as long as the dependency is away, and a `settle worker` started during the
outage (a host joining) waits for it rather than exiting. Afterwards every accepted
transfer is settled or failed exactly once, `settle audit` passes, and the service runs the
same processes as before: the same supervisors, web processes and sweeping process, and a
dramatiq with its worker processes again.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from shared.db.pool import connection, create_pool
from shared.db.psycopg_pool_adapter import RECONNECT_DELAY_MAX
from shared.testing.scratch import scratch_database
from tests.e2e.processes import Process, wait_until
from tests.faults.conftest import Faults, FaultsFactory
from tests.faults.load import HealthSampler, Load, accounts_with_money, random_plan
from tests.faults.processes import alive, children, dramatiq_tree, find_dramatiq
from tests.faults.servers import DedicatedPostgres, DedicatedRabbitMQ, DedicatedRedis
from tests.scratch import ROOT

pytestmark = pytest.mark.faults

#: How long the dependency stays away.
OUTAGE = 20.0
#: The restart backoff's cap for these tests (30 s by default): the policy under test is the
#: same, the wait after the outage shorter.
BACKOFF_MAX = "2"
TRANSFERS = 600


@pytest.fixture(scope="module")
def postgres() -> Iterator[DedicatedPostgres]:
    pgdata = ROOT / ".settle" / "test-servers" / f"faults-postgres-{uuid.uuid4().hex[:8]}"
    server = DedicatedPostgres(pgdata)
    yield server
    server.close()


@pytest.fixture
def database(postgres: DedicatedPostgres) -> Iterator[str]:
    with scratch_database(postgres.url(), prefix="settle_faults") as url:
        yield url


class Broker:
    """A broker of the test's own: its URL, and how to take it away and bring it back."""

    def __init__(self, url: str, stop: Callable[[], None], start: Callable[[], None]) -> None:
        self.url = url
        self.stop = stop
        self.start = start


@pytest.fixture(params=["redis", "rabbitmq"])
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A Valkey, then a RabbitMQ node, of the test's own (the RabbitMQ case needs what the
    other RabbitMQ cases need: SETTLE_TEST_RABBITMQ_URL, root and the rabbitmq-server
    package)."""
    if request.param == "redis":
        valkey = DedicatedRedis(tmp_path / "valkey")
        yield Broker(valkey.url, valkey.stop, valkey.start)
        valkey.close()
        return
    if not os.environ.get("SETTLE_TEST_RABBITMQ_URL"):
        pytest.skip("SETTLE_TEST_RABBITMQ_URL is unset")
    if not DedicatedRabbitMQ.available():
        pytest.skip("a RabbitMQ node of the test's own needs root and rabbitmq-server")
    rabbitmq = DedicatedRabbitMQ(tmp_path / "rabbitmq")
    yield Broker(rabbitmq.url, rabbitmq.stop, rabbitmq.start)
    rabbitmq.close()


def process_set(web: Process, worker: Process, sweeper: Process) -> dict[str, object]:
    """What runs under the three supervisors: the web processes and the sweeping process by
    pid (they are never killed here), dramatiq by how many worker processes it has."""
    _, workers = find_dramatiq(worker.pid)
    return {
        "running": (web.running(), worker.running(), sweeper.running()),
        "web": children(web.pid),
        "dramatiq worker processes": len(workers),
        "sweeper": children(sweeper.pid),
    }


def ride_out(faults: Faults, take_away: Callable[[], None], bring_back: Callable[[], None]) -> None:
    """The scenario: load, the outage with the dramatiq master killed inside it and a second
    `settle worker` started inside it, then the checks of the module docstring."""
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 30, 50_000)
    web = faults.start_web()
    worker = faults.start_worker()
    sweeper = faults.start_sweeper()
    before = process_set(web, worker, sweeper)
    health = HealthSampler(faults.port).start()
    load = Load(
        faults.port, random_plan(accounts, TRANSFERS, seed=20), api_key=faults.api_key, threads=4
    ).start()
    wait_until(lambda: load.done >= 100, timeout=60, what="100 transfers are accepted")
    master, workers = dramatiq_tree(worker.pid)
    faults.strays += workers

    refused = load.count(503)
    take_away()
    outage = threading.Event()  # set by nothing: the outage lasts OUTAGE seconds
    down = time.monotonic()
    try:
        wait_until(
            lambda: load.count(503) > refused,
            timeout=OUTAGE / 2,
            what="web answers 503 while the dependency is down",
        )
        os.kill(master, signal.SIGKILL)
        # A host joining during the outage: its `settle worker` waits instead of exiting.
        joining = faults.start("worker")
        worker.wait_for_log("dramatiq exited (killed by SIGKILL", timeout=OUTAGE / 2)
        outage.wait(max(0.0, down + OUTAGE - time.monotonic()))
        assert worker.running() and joining.running(), worker.logs() + joining.logs()
    finally:
        bring_back()
    print(f"\nthe dependency was away {time.monotonic() - down:.1f}s")

    load.join(timeout=120)
    assert load.complete, load.statuses
    assert load.unexpected == [], load.unexpected
    assert set(load.statuses) <= {202, 503}, load.statuses  # no 500, no dropped connection
    ids = load.ids()
    faults.wait_until_finished(ids, timeout=90)
    outcomes = faults.outcomes(ids)  # also: two entries per settled transfer, none otherwise
    assert sum(outcomes.values()) == len(ids) == TRANSFERS
    faults.audit()

    wait_until(
        lambda: process_set(web, worker, sweeper) == before,
        timeout=60,
        what=f"the service runs the same processes as before: {before}",
    )
    new_master, new_workers = dramatiq_tree(worker.pid)
    assert new_master != master and not alive(master)
    wait_until(
        lambda: not [pid for pid in workers if alive(pid)],
        timeout=30,
        what="the killed dramatiq's worker processes have exited",
    )
    assert 503 in health.ready and health.ready[-1] == 200, health.ready
    statuses = health.stop()
    assert len(statuses) >= OUTAGE and set(statuses) == {200}, f"/healthz answered {statuses}"
    assert worker.log_count("giving up") == 0
    joining.wait_for_log("Worker process is ready for action.", count=2, timeout=60)
    assert joining.log_count("trying again in") >= 1, joining.logs()
    assert [p.stop(group=False, timeout=60) for p in faults.processes] == [0, 0, 0, 0]


def test_postgres_down_20s_with_dramatiq_killed_inside_the_outage_loses_nothing(
    postgres: DedicatedPostgres, database: str, broker_url: str, make_faults: FaultsFactory
) -> None:
    faults = make_faults(
        database, broker_url, SWEEPER_GRACE_SECONDS="2", RESTART_BACKOFF_MAX_SECONDS=BACKOFF_MAX
    )
    ride_out(faults, postgres.stop, postgres.start)
    # dramatiq was started again while Postgres was away, and failed at boot each time.
    worker = faults.processes[1]
    assert worker.log_count("could not reach a dependency at boot") >= 3, worker.logs()


def test_the_broker_down_20s_with_dramatiq_killed_inside_the_outage_loses_nothing(
    own_broker: Broker, fault_database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults = make_faults(
        fault_database,
        own_broker.url,
        SWEEPER_GRACE_SECONDS="2",
        RESTART_BACKOFF_MAX_SECONDS=BACKOFF_MAX,
    )
    ride_out(faults, own_broker.stop, own_broker.start)
    web, _, sweeper, _ = faults.processes
    assert web.log_count("not queued: the message broker is unavailable") > 0
    assert sweeper.log_count("stale pending transfer(s)") > 0


def test_a_pool_waits_no_longer_than_the_cap_between_attempts_to_replace_a_lost_connection(
    postgres: DedicatedPostgres,
    database: str,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """psycopg_pool doubles the wait between attempts to replace a lost connection for as
    long as Postgres is away (1, 2, 4, 8 s ...), so the longer the outage, the longer a pool
    stays short after it. Settle's pool caps the wait: four failed attempts in, it is still
    at most RECONNECT_DELAY_MAX, and the pool serves a read once Postgres is back."""
    caplog.set_level(logging.DEBUG, logger="shared.db.psycopg_pool_adapter")
    pool = create_pool(settings.with_(database_url=database), "web", size=1)
    pool.open(wait=True, timeout=10)

    def waits() -> list[float]:
        found = (
            re.search(r"next connection attempt in ([0-9.]+)s", r.getMessage())
            for r in caplog.records
        )
        return [float(m.group(1)) for m in found if m]

    try:
        postgres.stop()
        try:
            pool.check()  # finds its connection dead, and starts replacing it
            wait_until(
                lambda: len(waits()) >= 4,
                timeout=60,
                what="four failed attempts to replace the lost connection",
            )
        finally:
            postgres.start()
        with connection(pool, timeout=30) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        lost = pool.get_stats().get("connections_lost", 0)
    finally:
        pool.close()
    assert lost == 1
    # Uncapped, the fourth wait would be 8 s.
    assert max(waits()) <= RECONNECT_DELAY_MAX, waits()
