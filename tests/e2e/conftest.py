"""Fixtures of the end-to-end tests: the real processes, started the way the Procfile does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import Process, process_env, report, start, wait_until_ready


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
def service(tmp_path: Path) -> Iterator[Service]:
    """Processes get the test database, Redis and broker namespace (conftest exported them),
    a free port, small process counts, a short sweeper grace period, and METRICS_DIR under
    the test's temporary directory. Whatever a test leaves running is killed afterwards."""
    env = process_env(SWEEPER_GRACE_SECONDS="2", METRICS_DIR=str(tmp_path / "metrics"))
    svc = Service(env, tmp_path)
    yield svc
    svc.kill_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach every process log to the report of a failed end-to-end test."""
    rep = yield
    svc = getattr(item, "funcargs", {}).get("service")
    if rep.when == "call" and rep.failed and isinstance(svc, Service) and svc.processes:
        rep.sections.append(("settle process logs", report(svc.processes)))
    return rep
