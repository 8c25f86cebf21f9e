"""Supervision never takes the service down for crashes: dramatiq worker processes killed
again and again under load, a killed web process, a killed sweeping process. And a worker
set that cannot boot says so once and stops instead of looping.

Each process runs as the Procfile starts it (`settle web|worker|sweeper`)."""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest

from shared.config import Settings
from tests.e2e.processes import descendants, http_status
from tests.faults.conftest import Faults, FaultsFactory
from tests.faults.load import HealthSampler, Load, accounts_with_money, random_plan
from tests.faults.processes import alive, children, find_dramatiq
from tests.helpers import wait_until

pytestmark = pytest.mark.faults

KILLS = 12
KILL_EVERY = 4.0
TRANSFERS_PER_TICK = 40


def dramatiq_with_workers(supervisor: int) -> tuple[int, list[int]] | None:
    """(dramatiq master, its worker processes) under `supervisor`, or None while there are
    none (dramatiq waiting out a backoff, or still forking)."""
    master, workers = find_dramatiq(supervisor)
    return (master, workers) if master is not None and workers else None


def test_killing_dramatiq_workers_every_4s_under_load_never_takes_the_service_down(
    fault_database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults: Faults = make_faults(fault_database, settings.redis_url, SWEEPER_GRACE_SECONDS="5")
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 30, 50_000)
    plan = random_plan(accounts, KILLS * TRANSFERS_PER_TICK, seed=12)
    web = faults.start_web()
    worker = faults.start_worker()
    sweeper = faults.start_sweeper()
    health = HealthSampler(faults.port).start()

    loads: list[Load] = []
    killed: dict[int, list[int]] = {}  # dramatiq master -> its worker processes killed
    tick = threading.Event()
    for n in range(KILLS):
        batch = plan[n * TRANSFERS_PER_TICK : (n + 1) * TRANSFERS_PER_TICK]
        loads.append(Load(faults.port, batch, api_key=faults.api_key, threads=2).start())
        # Each dramatiq ran about 4 s, so it is restarted after the first backoff step and
        # has its worker processes again well before the next tick; wait for them if not.
        master, workers = wait_until(
            lambda: dramatiq_with_workers(worker.pid),
            timeout=10,
            what="dramatiq has worker processes again",
        )
        faults.strays += workers
        os.kill(workers[0], signal.SIGKILL)
        killed.setdefault(master, []).append(workers[0])
        if n == KILLS // 2:  # and once the sweeping process, mid-storm
            os.kill(children(sweeper.pid)[0], signal.SIGKILL)
        tick.wait(KILL_EVERY)

    for load in loads:
        load.join(timeout=60)
    statuses = health.stop()
    assert len(statuses) >= KILLS and set(statuses) == {200}, f"/healthz answered {statuses}"
    # Readiness is about web's own dependencies (Postgres, Redis): dead workers do not take
    # web out of rotation.
    assert set(health.ready) == {200}, f"/readyz answered {health.ready}"
    assert web.running() and worker.running() and sweeper.running()
    assert sum(len(pids) for pids in killed.values()) == KILLS, killed
    worker.wait_for_log("dramatiq exited (exit 1 after", count=len(killed))
    worker.wait_for_log("; restarting in ", count=len(killed))
    assert worker.log_count("giving up") == 0
    sweeper.wait_for_log("sweeping process exited (killed by SIGKILL")
    sweeper.wait_for_log("sweeping every", count=2)

    ids = [i for load in loads for i in load.ids()]
    assert len(ids) == len(plan)
    assert all(load.unexpected == [] for load in loads)
    faults.wait_until_finished(ids, timeout=150)
    assert sum(faults.outcomes(ids).values()) == len(ids)
    faults.audit()
    assert [p.stop(group=False, timeout=60) for p in faults.processes] == [0, 0, 0]


def test_a_worker_set_that_cannot_boot_exits_once_with_its_line_and_the_refusal_code(
    fault_database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults = make_faults(
        fault_database,
        settings.redis_url,
        DB_CONNECTION_BUDGET="5",
        WORKER_PROCESSES="2",
        WORKER_THREADS="4",
    )
    worker = faults.start("worker")

    assert worker.wait(timeout=30) == 2
    lines = worker.logs().strip().splitlines()
    refusals = [line for line in lines if line.startswith("settle worker: budget: ")]
    assert refusals == [
        "settle worker: budget: 2 worker processes x 4 threads + 2 web x 1 + 2 event watches"
        " + 2 sweeper = 14 > 5 available (DB_CONNECTION_BUDGET)"
    ], lines
    assert worker.log_count("starting dramatiq") == 0


def test_a_killed_web_process_is_replaced_while_the_other_keeps_answering(
    fault_database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults = make_faults(fault_database, settings.redis_url, WEB_PROCESSES="2")
    web = faults.start_web()
    web.wait_for_log("serving on", count=2)
    before = children(web.pid)
    assert len(before) == 2

    answered: list[int | None] = [http_status(faults.port, "/healthz") for _ in range(5)]
    # Between two requests, so no request is in flight on the process that dies. Its socket
    # closes when it is gone: a connection the kernel queued on it while it was dying is
    # reset (tests/e2e/test_web_sockets.py), one made after goes to the other process. Gone
    # means reaped: a zombie's threads may still be exiting, holding its files open.
    os.kill(before[0], signal.SIGKILL)
    wait_until(
        lambda: not psutil.pid_exists(before[0]), timeout=30, what="the killed process is reaped"
    )
    while web.log_count("serving on") < 3:
        answered.append(http_status(faults.port, "/healthz"))
        assert web.running(), web.logs()
        assert len(answered) < 10_000, web.logs()
    answered += [http_status(faults.port, "/healthz") for _ in range(20)]

    assert set(answered) == {200}, answered
    assert web.log_count("web process exited (killed by SIGKILL") == 1
    after = children(web.pid)
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert not alive(before[0])
    assert set(descendants(web.pid)) == set(after)
    assert web.stop(group=False) == 0
