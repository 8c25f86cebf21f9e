"""Fixtures of the fault tests: the real processes on a database of their own (so that
`settle audit` judges exactly the ledger the test wrote) and a broker namespace (Redis) or
vhost (RabbitMQ) of their own.

Every fault test ends the same way: every transfer it wrote is settled or failed, and
`settle audit --pending-threshold 0` on its database exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from shared.config import Settings
from shared.config.brokers import broker_name
from shared.ledger import auth
from shared.testing.scratch import scratch_database
from tests.e2e.conftest import Service
from tests.e2e.processes import process_env, report, wait_until
from tests.scratch import settle


class Faults(Service):
    """The service under test, plus what a fault test needs around it."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir)
        #: The test's own connections go to Postgres itself, even when the service goes
        #: through PgBouncer (psycopg's prepared statements would not survive it).
        self.database_url = env.get("DATABASE_DIRECT_URL") or env["DATABASE_URL"]
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            self.api_key = auth.create_key(conn, user_id=None, label="faults").key
        #: Processes that left the tree of the processes started here (orphaned by a kill),
        #: to be killed at the end of the test if they are still running.
        self.strays: list[int] = []

    def kill_all(self) -> None:
        super().kill_all()
        for pid in self.strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, autocommit=True)

    def unfinished(self, ids: list[int]) -> int:
        """How many of `ids` are not yet settled or failed (a missing one counts too)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM transfers WHERE id = ANY(%s)"
                " AND status IN ('settled', 'failed')",
                (ids,),
            ).fetchone()
        assert row is not None
        return len(set(ids)) - int(row[0])

    def finished(self) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM transfers WHERE status <> 'pending'"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def wait_until_finished(self, ids: list[int], *, timeout: float) -> None:
        wait_until(
            lambda: self.unfinished(ids) == 0,
            timeout=timeout,
            what=f"all {len(ids)} accepted transfers are settled or failed",
            interval=0.2,
        )

    def audit(self) -> str:
        """`settle audit --pending-threshold 0` on this test's database, connecting as the
        service does: must exit 0."""
        done = settle("audit", "--pending-threshold", "0", env=self.env)
        assert done.returncode == 0, f"settle audit failed:\n{done.stdout}"
        return done.stdout

    def outcomes(self, ids: list[int]) -> dict[str, int]:
        """status -> count over `ids`, and for settled ones a check of their entries."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT t.status, count(e.id) FROM transfers t"
                " LEFT JOIN entries e ON e.transfer_id = t.id WHERE t.id = ANY(%s)"
                " GROUP BY t.id, t.status",
                (ids,),
            ).fetchall()
        counts: dict[str, int] = {}
        for status, entries in rows:
            assert entries == (2 if status == "settled" else 0), (status, entries)
            counts[status] = counts.get(status, 0) + 1
        return counts


@pytest.fixture
def fault_database(settings: Settings) -> Iterator[str]:
    """A migrated database of the test's own on the test server."""
    with scratch_database(settings.database_url, prefix="settle_faults") as url:
        yield url


class FaultsFactory:
    """Builds the service's environment: its own database, the broker `broker_url` names
    (BROKER_URL) with a namespace of its own on Redis, a free port,
    two web and two worker processes, the sweeper every half second, and `overrides`. Every
    process it started is killed, and its broker keys deleted, when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.created: list[Faults] = []

    def __call__(self, database_url: str, broker_url: str, **overrides: str) -> Faults:
        env = process_env(
            DATABASE_URL=database_url,
            BROKER_URL=broker_url,
            BROKER_NAMESPACE=f"settle-faults-{uuid.uuid4().hex[:8]}",
            **overrides,
        )
        faults = Faults(env, self._log_dir)
        self.created.append(faults)
        return faults

    def cleanup(self) -> None:
        for faults in self.created:
            faults.kill_all()
            if broker_name(faults.env["BROKER_URL"]) != "redis":
                continue  # a RabbitMQ vhost is deleted by the fixture that made it
            namespace = faults.env["BROKER_NAMESPACE"]
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(faults.env["BROKER_URL"], socket_timeout=5)
                keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()


@pytest.fixture
def make_faults(tmp_path: Path) -> Iterator[FaultsFactory]:
    factory = FaultsFactory(tmp_path)
    yield factory
    factory.cleanup()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach every process log to the report of a failed fault test."""
    rep = yield
    factory = getattr(item, "funcargs", {}).get("make_faults")
    if rep.when == "call" and rep.failed and isinstance(factory, FaultsFactory):
        for faults in factory.created:
            if faults.processes:
                rep.sections.append(("settle process logs", report(faults.processes)))
    return rep
