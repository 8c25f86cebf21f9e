"""Every statement that locks several transfers or accounts takes them in ascending id order,
so settling batches never deadlock against the other statements that lock transfers:
dead-lettering a batch, recording a failed attempt, releasing and cancelling.

The stress runs each of them from threads of their own over one small, shared set of
transfers on a database of the test's own, and then asserts that no statement was chosen as
a deadlock victim (as each thread saw it, and as `pg_stat_database.deadlocks` counts it)
and that the ledger balances."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors as pg_errors

from shared.config import Settings
from shared.ledger import dead_letters, operator_actions
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.ledger.auth import SYSTEM
from shared.testing.scratch import scratch_database
from tests.helpers import fund, make_account, submit, wait_until

#: Calls of each kind of statement. Today's main deadlocked within a few hundred.
ROUNDS = 500
#: Transfers kept pending at once: few, so that every statement meets the others' locks.
LIVE = 40


@pytest.fixture
def scratch(settings: Settings) -> Iterator[str]:
    """A database of its own: `pg_stat_database.deadlocks` counts this test's alone."""
    with scratch_database(settings.database_url) as url:
        yield url


def deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


class Stress:
    """A pool of pending transfers that the threads draw random batches from; settling and
    cancelling end some, and a feeder tops the pool up."""

    def __init__(self, url: str, accounts: list[int]) -> None:
        self.url = url
        self.accounts = accounts
        self.rng = random.Random(13)
        self.lock = threading.Lock()
        self.live: list[int] = []
        self.victims: list[str] = []  # statements that died of a deadlock

    def batch(self, low: int, high: int) -> list[int]:
        with self.lock:
            ids = list(self.live)
            size = min(len(ids), self.rng.randint(low, high))
            return self.rng.sample(ids, size)  # deliberately in no order

    def top_up(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT id FROM transfers WHERE status = 'pending' ORDER BY id"
        ).fetchall()
        live = [int(row[0]) for row in rows]
        while len(live) < LIVE:
            source, target = self.rng.sample(self.accounts, 2)
            live.append(submit(conn, source, target, self.rng.randint(1, 50)))
        with self.lock:
            self.live = live

    def run(self, name: str, step: Callable[[psycopg.Connection], object]) -> int:
        """Call `step` ROUNDS times on a connection of its own (with the pools' short lock
        timeout); count what a deadlock killed, and let lock timeouts pass."""
        done = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            for _ in range(ROUNDS):
                try:
                    step(conn)
                except pg_errors.DeadlockDetected as exc:
                    self.victims.append(f"{name}: {str(exc).splitlines()[0]}")
                except pg_errors.LockNotAvailable:
                    pass
                done += 1
        return done


def test_settling_batches_never_deadlock_with_dead_lettering_retries_releases_and_cancels(
    scratch: str,
) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        treasury = make_account(conn, treasury=True)
        accounts = [make_account(conn) for _ in range(8)]
        for account in accounts:
            fund(conn, treasury, account, 1_000_000)
        stress = Stress(scratch, accounts)
        stress.top_up(conn)
    before = deadlocks(scratch)

    def settle(conn: psycopg.Connection) -> None:
        ledger.settle_transfers(conn, stress.batch(5, 40))

    def mark(conn: psycopg.Connection) -> None:
        dead_letters.mark_all(conn, stress.batch(5, 40), "LockNotAvailable: stress")

    def record(conn: psycopg.Connection) -> None:
        ledger.record_failed_attempt(conn, stress.batch(5, 40), "LockNotAvailable: stress")

    def release(conn: psycopg.Connection) -> None:
        dead_letters.release(conn, stress.batch(5, 40))

    def cancel(conn: psycopg.Connection) -> None:
        for tid in stress.batch(1, 3):
            operator_actions.cancel(conn, tid, by=operator_actions.require_acting(SYSTEM))

    def feed(conn: psycopg.Connection) -> None:
        stress.top_up(conn)

    steps = {
        "settle_transfers": settle,
        "settle_transfers again": settle,
        "mark_all": mark,
        "record_failed_attempt": record,
        "release": release,
        "cancel": cancel,
        "top up": feed,
    }
    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(stress.run, name, step) for name, step in steps.items()]
        assert [f.result(timeout=300) for f in futures] == [ROUNDS] * len(steps)

    # A backend flushes its statistics when it exits: wait until the stress's have.
    def stress_backends_gone() -> bool:
        with psycopg.connect(scratch, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(stress_backends_gone, timeout=30, what="the stress's connections have closed")
    assert stress.victims == []
    assert deadlocks(scratch) == before
    with psycopg.connect(scratch, autocommit=True) as conn:
        assert find_violations(conn) == []
