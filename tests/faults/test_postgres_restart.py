"""Postgres restarted mid-load, on a Postgres of the test's own (never the shared one): while
it is down web answers 503 (never 500, never a dropped connection), its pools and the
workers' recover on their own once it is back, and every accepted transfer ends settled or
failed exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from shared.runtime.settings import Settings
from shared.testing.scratch import scratch_database
from tests.e2e.processes import http_status, wait_until
from tests.faults.conftest import FaultsFactory
from tests.faults.load import Load, accounts_with_money, random_plan
from tests.faults.servers import DedicatedPostgres
from tests.scratch import ROOT

pytestmark = pytest.mark.faults


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


def test_a_postgres_restart_mid_load_answers_503_then_recovers_and_loses_nothing(
    postgres: DedicatedPostgres, database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults = make_faults(database, settings.message_broker_url, SWEEPER_GRACE_SECONDS="2")
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 30, 50_000)
    faults.start_web()
    faults.start_worker()
    faults.start_sweeper()
    plan = random_plan(accounts, 1_500, seed=5)
    load = Load(faults.port, plan, api_key=faults.api_key, threads=8).start()
    wait_until(lambda: load.done >= 300, timeout=60, what="300 transfers are accepted")

    unavailable_before = load.count(503)
    postgres.stop()
    try:
        wait_until(
            lambda: load.count(503) >= unavailable_before + 10,
            timeout=30,
            what="web answers 503 while Postgres is down",
        )
        readiness = http_status(faults.port, "/readyz", timeout=15)
        accepted_while_down = load.done
    finally:
        postgres.start()
    back = time.monotonic()
    wait_until(
        lambda: load.done >= accepted_while_down + 50,
        timeout=30,
        what="transfers are accepted again after Postgres is back",
    )
    print(f"\nweb accepted transfers again {time.monotonic() - back:.2f}s after Postgres was back")

    load.join(timeout=120)
    assert load.complete, load.statuses
    assert readiness == 503
    assert load.unexpected == []
    assert set(load.statuses) == {202, 503}, load.statuses  # no 500, no dropped connection
    ids = load.ids()
    faults.wait_until_finished(ids, timeout=90)
    outcomes = faults.outcomes(ids)
    assert sum(outcomes.values()) == len(ids) == 1_500
    faults.audit()
    assert [p.stop(group=False) for p in faults.processes] == [0, 0, 0]
