"""A plan that does not fit refuses to start, in every process, with the arithmetic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest

from shared.config import Settings
from shared.runtime.embedded import free_port
from worker.pool import LendConnections

SETTLE = Path(sys.executable).with_name("settle")
TOO_SMALL = {
    "DB_CONNECTION_BUDGET": "30",
    "WEB_PROCESSES": "2",
    "WEB_THREADS": "4",
    "WORKER_PROCESSES": "4",
    "WORKER_THREADS": "8",
}
REFUSAL = (
    "budget: 4 worker processes x 8 threads + 2 web x 1 + 2 event watches + 1 webhook x 2"
    " + 2 sweeper = 40 > 30 available (DB_CONNECTION_BUDGET)"
)


def settle(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SETTLE), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settle_budget_prints_the_plan_without_a_database() -> None:
    done = settle("budget", DB_CONNECTION_BUDGET="40", DATABASE_URL="postgresql://nowhere:1/x")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["role", "instances", "processes", "threads", "pool", "total"]
    assert lines[-1] == "total 30 of 40 available (DB_CONNECTION_BUDGET); headroom 10"


def test_settle_budget_exits_2_with_the_arithmetic_when_the_plan_does_not_fit() -> None:
    done = settle("budget", **TOO_SMALL)
    assert done.returncode == 2
    assert done.stderr.strip() == f"settle budget: {REFUSAL}"
    assert done.stdout == ""


@pytest.mark.parametrize("role", ["web", "worker", "sweeper"])
def test_a_process_refuses_to_start_when_the_plan_does_not_fit(role: str) -> None:
    port = free_port()
    done = settle(role, PORT=str(port), **TOO_SMALL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"settle {role}: {REFUSAL}"
    if role == "web":  # refused before binding: the port is still free
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_dramatiq_worker_process_refuses_to_boot_with_exit_code_2_and_the_arithmetic(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from dramatiq.brokers.redis import RedisBroker

    too_small = settings.with_(
        db_connection_budget=30, web_processes=2, worker_processes=4, worker_threads=8
    )
    broker = RedisBroker(url=settings.redis_url, namespace=f"{settings.broker_namespace}-refuse")
    broker.add_middleware(LendConnections(too_small))
    worker = dramatiq.Worker(broker, worker_threads=1)
    with pytest.raises(SystemExit) as refused:
        worker.start()
    broker.close()
    # 2, not dramatiq's 1 for an uncaught error: `settle worker` gives up on it.
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == f"settle worker: {REFUSAL}"


def test_settle_budget_behind_pgbouncer_shows_clients_pgbouncer_and_postgres() -> None:
    done = settle(
        "budget",
        DB_POOLER="pgbouncer",
        DB_POOLER_CLIENT_LIMIT="200",
        DB_POOLER_POOL_SIZE="20",
        DB_CONNECTION_BUDGET="40",
        DATABASE_URL="postgresql://nowhere:1/x",
        WEB_THREADS="4",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-3:] == [
        "total 22 of 195 available (DB_POOLER_CLIENT_LIMIT 200 - 5 reserved); headroom 173",
        "pgbouncer: 22 client connections -> a pool of 20 server connections (DB_POOLER_POOL_SIZE)",
        "postgres: 20 of 40 available (DB_CONNECTION_BUDGET); headroom 20",
    ]


@pytest.mark.parametrize(
    ("limits", "refusal"),
    [
        (
            {"DB_POOLER_CLIENT_LIMIT": "15", "DB_POOLER_POOL_SIZE": "10"},
            "budget: 2 worker processes x 4 threads + 2 web x 1 + 2 event watches"
            " + 1 webhook x 2 + 2 sweeper = 16 > 10 available (DB_POOLER_CLIENT_LIMIT 15 - 5"
            " reserved)",
        ),
        (
            {"DB_POOLER_CLIENT_LIMIT": "200", "DB_POOLER_POOL_SIZE": "50"},
            "budget: PgBouncer's pool of 50 server connections (DB_POOLER_POOL_SIZE)"
            " > 40 available (DB_CONNECTION_BUDGET)",
        ),
    ],
    ids=["clients", "server connections"],
)
def test_settle_budget_behind_pgbouncer_refuses_a_plan_that_does_not_fit_either_side(
    limits: dict[str, str], refusal: str
) -> None:
    done = settle("budget", DB_POOLER="pgbouncer", DB_CONNECTION_BUDGET="40", **limits)
    assert done.returncode == 2
    assert done.stderr.strip() == f"settle budget: {refusal}"
