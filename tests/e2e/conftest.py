"""Fixtures of the end-to-end tests: the real processes, started the way the Procfile does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict

from shared.config import Settings
from shared.ledger import auth
from shared.testing.scratch import scratch_database
from tests.e2e.processes import Process, process_env, report, start, wait_until_ready
from tests.pgbouncer import PgBouncer, pooled_env
from tests.scratch import settle


class Service:
    """The web, worker and sweeper processes of one test, sharing one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def start(self, role: str) -> Process:
        process = start(role, self.env, self.log_dir)
        self.processes.append(process)
        return process

    def start_web(self) -> Process:
        web = self.start("web")
        wait_until_ready(web, self.port)
        return web

    def start_worker(self) -> Process:
        worker = self.start("worker")
        processes = int(self.env["WORKER_PROCESSES"])
        worker.wait_for_log("Worker process is ready for action.", count=processes)
        return worker

    def start_sweeper(self) -> Process:
        sweeper = self.start("sweeper")
        sweeper.wait_for_log("sweeping every")
        return sweeper

    def kill_all(self) -> None:
        for process in self.processes:
            process.kill()


@pytest.fixture
def broker_env() -> dict[str, str]:
    """Settings that pick the broker of the processes: none, so the suite's own (conftest
    exported it). A test module overrides this fixture to run on each broker."""
    return {}


@pytest.fixture
def service(tmp_path: Path, broker_env: dict[str, str]) -> Iterator[Service]:
    """Processes get the test database, broker and broker namespace (conftest exported them,
    `broker_env` may change the broker), a free port, small process counts, a short sweeper
    grace period, and METRICS_DIR under the test's temporary directory. Whatever a test
    leaves running is killed afterwards."""
    env = process_env(
        SWEEPER_GRACE_SECONDS="2", METRICS_DIR=str(tmp_path / "metrics"), **broker_env
    )
    svc = Service(env, tmp_path)
    yield svc
    svc.kill_all()


class PooledService(Service):
    """The service on a database of its own that it reaches through PgBouncer in transaction
    mode (DB_POOLER=pgbouncer), migrated by `settle migrate` as a release would; the test
    reads and writes that database directly (`direct_url`), with an operator key of its own."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, direct_url: str, pgbouncer: PgBouncer
    ) -> None:
        super().__init__(env, log_dir)
        self.direct_url = direct_url
        self.pgbouncer = pgbouncer
        with psycopg.connect(direct_url, autocommit=True) as conn:
            self.api_key = auth.create_key(conn, user_id=None, label="e2e").key

    def pooled_transactions(self) -> int:
        """Transactions PgBouncer has run on this service's database so far."""
        dbname = conninfo_to_dict(self.direct_url)["dbname"]
        stats = self.pgbouncer.show(self.direct_url, "STATS")
        return sum(int(str(row["total_xact_count"])) for row in stats if row["database"] == dbname)


@pytest.fixture
def pooled_service(
    pgbouncer: PgBouncer, settings: Settings, tmp_path: Path
) -> Iterator[PooledService]:
    with scratch_database(settings.database_url, prefix="settle_pooled") as direct_url:
        env = process_env(
            SWEEPER_GRACE_SECONDS="2",
            BROKER_NAMESPACE=f"settle-pooled-{uuid.uuid4().hex[:8]}",
            **pooled_env(pgbouncer, direct_url),
        )
        done = settle("migrate", env=env)
        assert done.returncode == 0, done.stdout
        pgbouncer.reconnect(direct_url)  # server connections start with the role's timeouts
        svc = PooledService(env, tmp_path, direct_url, pgbouncer)
        try:
            yield svc
        finally:
            svc.kill_all()
            client = redis.Redis.from_url(env["REDIS_URL"])
            keys = list(client.scan_iter(match=f"{env['BROKER_NAMESPACE']}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach every process log to the report of a failed end-to-end test."""
    rep = yield
    funcargs = getattr(item, "funcargs", {})
    svc = funcargs.get("service") or funcargs.get("pooled_service")
    if rep.when == "call" and rep.failed and isinstance(svc, Service) and svc.processes:
        rep.sections.append(("settle process logs", report(svc.processes)))
    return rep
