"""Redis flushed (FLUSHALL) and restarted mid-load, on a Valkey of the test's own (never the
shared one): every queued message is gone, web keeps accepting (the transfer is committed
before its message is sent), and the sweeper re-drives every pending transfer, so each one
still ends settled or failed exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from tests.e2e.processes import wait_until
from tests.faults.conftest import FaultsFactory
from tests.faults.load import Load, accounts_with_money, random_plan
from tests.faults.servers import DedicatedRedis
from tests.helpers import submit

pytestmark = pytest.mark.faults


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[DedicatedRedis]:
    server = DedicatedRedis(tmp_path / "valkey")
    yield server
    server.close()


def test_a_redis_flush_and_restart_mid_load_is_redriven_by_the_sweeper_without_doubles(
    valkey: DedicatedRedis, fault_database: str, settings: Settings, make_faults: FaultsFactory
) -> None:
    faults = make_faults(fault_database, valkey.url, SWEEPER_GRACE_SECONDS="2")
    with faults.connect() as conn:
        treasury, accounts = accounts_with_money(conn, 30, 50_000)
    web = faults.start_web()
    faults.start_worker()
    sweeper = faults.start_sweeper()
    plan = random_plan(accounts, 1_500, seed=7)
    load = Load(faults.port, plan, api_key=faults.api_key, threads=8).start()
    wait_until(lambda: load.done >= 300, timeout=60, what="300 transfers are accepted")

    valkey.flush_and_stop()
    try:
        # Transfers are recorded, but cannot be queued: 503 broker_unavailable, retried by
        # the load with the same Idempotency-Key.
        refused_before = load.statuses[503]
        wait_until(
            lambda: load.statuses[503] >= refused_before + 20,
            timeout=30,
            what="POST /transfers answers 503 while Redis is down",
        )
        # And transfers committed by a web process that died before it could send them:
        # whether the flush finds a backlog to lose depends on how far behind the workers
        # are, but these have no message for sure, so only the sweeper can deliver them.
        with faults.connect() as conn:
            stranded = [submit(conn, treasury, accounts[0], 1) for _ in range(3)]
    finally:
        valkey.start()

    load.join(timeout=120)
    assert load.complete, load.statuses
    assert load.unexpected == []
    ids = load.ids()
    faults.wait_until_finished(ids + stranded, timeout=90)
    outcomes = faults.outcomes(ids)  # also: two entries per settled transfer, none otherwise
    assert sum(outcomes.values()) == len(ids) == 1_500
    assert faults.outcomes(stranded) == {"settled": 3}
    faults.audit()
    # Some were recorded with no message sent, and the flush lost queued ones: the sweeper
    # is what delivered those.
    assert web.log_count("not queued: the message broker is unavailable") > 0
    assert sweeper.log_count("stale pending transfer(s)") > 0
    assert [p.stop(group=False) for p in faults.processes] == [0, 0, 0]
