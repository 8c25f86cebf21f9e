"""Hundreds of concurrent transfers over HTTP through the real web, worker and sweeper
processes, on each broker; afterwards the ledger must balance to the cent."""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from shared.config import Settings
from shared.ledger.audit import find_violations
from tests.e2e.api import Client
from tests.e2e.conftest import PooledService, Service
from tests.e2e.processes import wait_until
from tests.helpers import fund, make_account
from tests.scratch import settle

ACCOUNTS = 20
OPENING_BALANCE = 10_000
UNAFFORDABLE = 1_000_000  # more than all the money in this test


@pytest.fixture
def broker_env(broker_url: str) -> dict[str, str]:
    """Each broker in turn: the suite's Redis, then a RabbitMQ vhost of the test's own."""
    return {"BROKER_URL": broker_url}


def plan_transfers(accounts: list[int]) -> list[tuple[int, int, int]]:
    """(from, to, amount): both directions between one pair, random pairs whose amounts
    overdraw some accounts as money moves, and a few no account could ever afford."""
    rng = random.Random(20240611)
    first, second = accounts[0], accounts[1]
    plan = [(first, second, 300 + i) if i % 2 else (second, first, 250 + i) for i in range(100)]
    for _ in range(400):
        source, target = rng.sample(accounts, 2)
        plan.append((source, target, rng.randint(100, 2_500)))
    plan += [(accounts[i], accounts[i + 1], UNAFFORDABLE) for i in range(10)]
    rng.shuffle(plan)
    return plan


@pytest.mark.e2e
def test_concurrent_transfers_over_http_all_settle_or_fail_and_the_ledger_balances(
    service: Service, db: psycopg.Connection
) -> None:
    run_load(service, db)


@pytest.mark.e2e
def test_the_same_load_through_pgbouncer_in_transaction_mode_keeps_the_ledger_balanced(
    pooled_service: PooledService,
) -> None:
    with psycopg.connect(pooled_service.direct_url, autocommit=True) as db:
        run_load(pooled_service, db, key=pooled_service.api_key)
    # Every transfer was at least one transaction of web's and one of a worker's through it.
    assert pooled_service.pooled_transactions() > 2 * len(plan_transfers(list(range(ACCOUNTS))))
    audit = settle("audit", "--pending-threshold", "0", env=pooled_service.env)
    assert audit.returncode == 0, audit.stdout


def run_load(service: Service, db: psycopg.Connection, *, key: str | None = None) -> None:
    """Submit the planned transfers over HTTP from 32 threads through real web, worker and
    sweeper processes; check that each ended once, the ledger balances, and all exit 0."""
    web = service.start_web()
    worker = service.start_worker()
    sweeper = service.start_sweeper()
    treasury = make_account(db, treasury=True)
    accounts = [make_account(db) for _ in range(ACCOUNTS)]
    for account in accounts:
        fund(db, treasury, account, OPENING_BALANCE)
    plan = plan_transfers(accounts)

    with Client(service.port) as client:
        _, _, ready = client.request("GET", "/readyz")
    broker = Settings.from_env(service.env).broker
    assert ready["data"][broker] == "ok"  # the processes run on the broker of this case

    started = time.monotonic()
    deadline = started + 60
    with Client(service.port, key=key) as client, ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(
            pool.map(
                lambda t: client.submit_transfer(*t, key=uuid.uuid4().hex, deadline=deadline),
                plan,
            )
        )
    submitted = time.monotonic()

    assert [a.status for a in answers] == [202] * len(plan), [
        (a.status, a.body) for a in answers if a.status != 202
    ]
    ids = [int(a.body["data"]["id"]) for a in answers]
    assert len(set(ids)) == len(plan)

    def still_pending() -> int:
        row = db.execute(
            "SELECT count(*) FROM transfers WHERE id = ANY(%s) AND status = 'pending'", (ids,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    wait_until(lambda: still_pending() == 0, timeout=60, what="every transfer is terminal")
    finished = time.monotonic()
    print(
        f"\n{len(plan)} transfers: accepted in {submitted - started:.2f}s"
        f" ({len(plan) / (submitted - started):.0f}/s over HTTP),"
        f" all terminal after {finished - started:.2f}s"
        f" ({len(plan) / (finished - started):.0f}/s end to end)"
    )

    assert find_violations(db) == []
    ours = [treasury, *accounts]
    balances = dict(
        db.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s)", (ours,)).fetchall()
    )
    assert sum(balances.values()) == 0  # all of it came from, and stayed within, this test
    assert all(balances[a] >= 0 for a in accounts)
    entry_sums = dict(
        db.execute(
            "SELECT account_id, sum(amount) FROM entries WHERE account_id = ANY(%s)"
            " GROUP BY account_id",
            (ours,),
        ).fetchall()
    )
    assert {a: entry_sums.get(a, 0) for a in ours} == balances

    outcomes = db.execute(
        "SELECT t.status, t.failure_code, t.amount, count(e.id) FILTER (WHERE e.amount < 0),"
        " count(e.id) FILTER (WHERE e.amount > 0) FROM transfers t"
        " LEFT JOIN entries e ON e.transfer_id = t.id WHERE t.id = ANY(%s) GROUP BY t.id",
        (ids,),
    ).fetchall()
    settled = [o for o in outcomes if o[0] == "settled"]
    failed = [o for o in outcomes if o[0] == "failed"]
    assert len(settled) + len(failed) == len(plan)
    assert all((debits, credits) == (1, 1) for _, _, _, debits, credits in settled)
    assert all((debits, credits) == (0, 0) for _, _, _, debits, credits in failed)
    assert {code for _, code, _, _, _ in failed} == {"insufficient_funds"}
    assert sum(1 for o in failed if o[2] == UNAFFORDABLE) == 10
    assert len(failed) > 10  # some ordinary ones overdrew too
    assert len(settled) > len(plan) // 2

    processes = [web, worker, sweeper]
    assert [(p.role, p.stop(group=False)) for p in processes] == [
        ("web", 0),
        ("worker", 0),
        ("sweeper", 0),
    ]
