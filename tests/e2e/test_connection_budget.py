"""The connection budget holds for real processes under load, even with more processes
than the plan counted: pg_stat_activity is sampled every 100 ms throughout."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from shared.config import Settings
from shared.db.activity import Sampler, connections_by_role
from shared.db.budget import Capacity, Plan, make_plan
from tests.e2e.api import Client
from tests.e2e.conftest import Service
from tests.e2e.processes import wait_until
from tests.helpers import fund, make_account

BUDGET = 14
SMALL = {
    "DB_CONNECTION_BUDGET": str(BUDGET),
    "WEB_PROCESSES": "2",
    "WEB_THREADS": "4",
    "WORKER_PROCESSES": "2",
    "WORKER_THREADS": "3",
    "LEASE_TTL_SECONDS": "3",
}


@pytest.fixture
def small(service: Service, db: psycopg.Connection) -> Iterator[Plan]:
    """The service configured for a 14-connection budget; the plan it must keep to."""
    # Leases of processes killed by earlier tests would hold budget until they expire.
    db.execute("DELETE FROM connection_leases")
    service.env.update(SMALL)
    yield make_plan(Settings.from_env(service.env), Capacity(BUDGET, "DB_CONNECTION_BUDGET"))


def funded_accounts(db: psycopg.Connection, count: int) -> list[int]:
    treasury = make_account(db, treasury=True)
    accounts = [make_account(db) for _ in range(count)]
    for account in accounts:
        fund(db, treasury, account, 50_000)
    return accounts


def submit_many(port: int, accounts: list[int], count: int) -> list[int]:
    """Submit `count` transfers in a ring over `accounts` from 16 threads; their ids."""
    deadline = time.monotonic() + 90
    with Client(port) as client, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(
                lambda i: client.submit_transfer(
                    accounts[i % len(accounts)],
                    accounts[(i + 1) % len(accounts)],
                    10 + i % 50,
                    key=uuid.uuid4().hex,
                    deadline=deadline,
                ),
                range(count),
            )
        )
    assert all(a.status == 202 for a in answers), [a for a in answers if a.status != 202]
    return [int(a.body["data"]["id"]) for a in answers]


def wait_terminal(db: psycopg.Connection, ids: list[int]) -> None:
    def pending() -> int:
        row = db.execute(
            "SELECT count(*) FROM transfers WHERE id = ANY(%s) AND status = 'pending'", (ids,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    wait_until(lambda: pending() == 0, timeout=90, what="every transfer is terminal")


def assert_no_connection_refusals(service: Service) -> None:
    for process in service.processes:
        assert process.log_count("too many clients") == 0, process.logs()
        assert process.log_count("remaining connection slots") == 0, process.logs()


@pytest.mark.e2e
def test_under_load_no_role_holds_more_connections_than_the_plan_gives_it(
    service: Service, small: Plan, db: psycopg.Connection, settings: Settings, database_name: str
) -> None:
    # 2 web x 2 + 2 event watches + 2 workers x 3 + 2 sweeper (no webhook processes here)
    assert (small.web.pool_size, small.events.total, small.worker.pool_size) == (2, 2, 3)
    assert small.total == 14
    service.start_web()
    service.start_worker()
    service.start_sweeper()
    accounts = funded_accounts(db, 10)

    with Sampler(settings.database_url, database_name) as sampler:
        ids = submit_many(service.port, accounts, 400)
        wait_terminal(db, ids)

    assert sampler.error is None
    assert sampler.samples >= 5
    print(f"\nsampled peaks {dict(sampler.peak)}, total {sampler.peak_total} of {BUDGET}")
    assert sampler.peak["web"] <= small.web.total
    assert sampler.peak["worker"] <= small.worker.total
    assert sampler.peak["sweeper"] <= small.sweeper.total
    assert sampler.peak["events"] <= small.events.total
    assert sampler.peak_total <= BUDGET
    # The sampler saw the pools (a sampler that saw nothing would pass the bounds above).
    assert sampler.peak["web"] == small.web.total
    assert sampler.peak["worker"] == small.worker.total
    assert sampler.peak["events"] == small.events.total
    assert_no_connection_refusals(service)
    for process in list(service.processes):
        assert process.stop() == 0


@pytest.mark.e2e
def test_workers_started_beyond_the_plan_share_the_budget_and_give_it_back(
    service: Service, small: Plan, db: psycopg.Connection, settings: Settings, database_name: str
) -> None:
    service.start_web()
    planned_worker = service.start_worker()
    service.start_sweeper()
    accounts = funded_accounts(db, 10)
    ids: list[int] = []

    def traffic() -> None:
        for _ in range(3):
            ids.extend(submit_many(service.port, accounts, 150))

    with Sampler(settings.database_url, database_name) as sampler:
        sender = threading.Thread(target=traffic)
        sender.start()
        extra = service.start("worker")  # two more worker processes than the plan counted
        extra.wait_for_log("Worker process is ready for action.", count=2, timeout=60)
        sender.join(timeout=120)
        assert not sender.is_alive()
        assert extra.stop() == 0
        # Once the extra processes are gone, the planned ones grow back to their share.
        wait_until(
            lambda: connections_by_role(db, database_name)["worker"] == small.worker.total,
            timeout=30,
            what="the planned workers hold their full share again",
        )
        wait_terminal(db, ids)

    assert sampler.error is None
    print(f"\nsampled peaks {dict(sampler.peak)}, total {sampler.peak_total} of {BUDGET}")
    assert sampler.peak_total <= BUDGET
    assert len(ids) == 450
    assert extra.log_count("connection lease") >= 2  # the extra processes did take leases
    assert_no_connection_refusals(service)
    assert planned_worker.running()
    for process in list(service.processes):
        if process.running():
            assert process.stop() == 0
