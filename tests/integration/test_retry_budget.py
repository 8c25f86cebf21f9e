"""Retries that mean what they say: a transfer's settlement is attempted at most
TRANSFER_MAX_RETRIES + 1 times however many messages carry it, the sweeper leaves alone a
transfer waiting out a retry (and re-drives one whose retry message was lost, within what is
left of its budget), and a transfer is dead-lettered once per exhaustion: one mark, one log
line, one dead-letter message.

On the real database and each real broker, with an in-process worker; settlement fails by a
transaction holding an account's row lock, as a long report or a stuck session would."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.broker.redis_broker import SettleRedisBroker
from shared.config import Settings
from shared.ledger.audit import find_violations
from shared.testing.scratch import scratch_database
from tests.helpers import (
    fund,
    join_queue,
    make_account,
    opened_pool,
    queued_transfer_ids,
    running_worker,
    submit,
    transfer_row,
    wait_until,
)
from worker.actors import create_broker, settle_transfer, settle_transfers
from worker.sweeper import sweep_once

MAX_RETRIES = 3


@pytest.fixture
def scratch(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url) as url:
        yield url


@pytest.fixture
def db(scratch: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the scratch database, whose ledger must balance at the end."""
    with psycopg.connect(scratch, autocommit=True) as conn:
        yield conn
        assert find_violations(conn) == []


@pytest.fixture
def budget_settings(settings: Settings, scratch: str, broker_url: str) -> Settings:
    """Short everything, so that a whole retry horizon takes a second or two: a failed attempt
    is a 200 ms lock wait, backoffs of 50 to 400 ms, a sweeper grace of half a second."""
    return settings.with_(
        database_url=scratch,
        broker_url=broker_url,
        broker_namespace=f"{settings.broker_namespace}-rb-{uuid.uuid4().hex[:6]}",
        lock_timeout_ms=200,
        transfer_max_retries=MAX_RETRIES,
        transfer_min_backoff_ms=50,
        transfer_max_backoff_ms=400,
        sweeper_grace_seconds=0.5,
        sweeper_interval_seconds=0.1,
    )


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[SettleBroker]:
    """The settle actors on a broker of `settings` (its own namespace, or vhost)."""
    built, _ = create_broker(settings)
    built.declare_actor(settle_transfer)
    built.declare_actor(settle_transfers)
    try:
        yield built
    finally:
        if isinstance(built, SettleRedisBroker):
            keys = list(built.client.scan_iter(match=f"{built.namespace}*", count=1000))
            if keys:
                built.client.delete(*keys)
        built.close()


@pytest.fixture
def broker(budget_settings: Settings) -> Iterator[SettleBroker]:
    with broker_for(budget_settings) as built:
        yield built


@pytest.fixture
def sweeper_pool(budget_settings: Settings) -> Iterator[ConnectionPool]:
    with opened_pool(budget_settings, "sweeper", size=1) as pool:
        yield pool


class Sweeper:
    """The sweeper's loop in a thread: a pass every SWEEPER_INTERVAL_SECONDS."""

    def __init__(self, pool: ConnectionPool, settings: Settings, broker: SettleBroker):
        self._args = (pool, settings, broker)
        self._interval = settings.sweeper_interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sweeper", daemon=True)
        self.passes = 0
        self.sent = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += sweep_once(*self._args)
            self.passes += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> Sweeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def dead_letter_lines(caplog: pytest.LogCaptureFixture) -> dict[int, int]:
    """Transfer id -> ERROR lines saying it was dead-lettered."""
    found: dict[int, int] = {}
    for record in caplog.records:
        match = re.match(r"transfer (\d+): dead-lettered", record.getMessage())
        if record.levelno == logging.ERROR and match:
            tid = int(match.group(1))
            found[tid] = found.get(tid, 0) + 1
    return found


def test_an_account_held_past_the_whole_retry_horizon_under_load_costs_each_transfer_one_budget(
    db: psycopg.Connection,
    budget_settings: Settings,
    broker: SettleBroker,
    sweeper_pool: ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    treasury = make_account(db, treasury=True)
    held = make_account(db)  # the lowest id: batches wait on it holding no other account
    others = [make_account(db) for _ in range(8)]
    for account in (held, *others):
        fund(db, treasury, account, 100_000)
    rng = random.Random(4)
    transfers: list[int] = []
    touching_held: set[int] = set()
    for n in range(96):
        source, target = rng.sample(others, 2)
        if n % 4 == 0:  # a quarter pay to or from the held account
            source, target = (held, source) if n % 8 == 0 else (source, held)
        transfers.append(submit(db, source, target, rng.randint(1, 100)))
        if held in (source, target):
            touching_held.add(transfers[-1])
    groups: list[list[int]] = []  # mixed batches, as a busy web process sends them
    rest = list(transfers)
    rng.shuffle(rest)
    while rest:
        size = rng.randint(1, 8)
        groups.append(sorted(rest[:size]))
        rest = rest[size:]
    half = len(groups) // 2

    def settled_or_dead_lettered() -> bool:
        row = db.execute(
            "SELECT count(*) FROM transfers WHERE id = ANY(%s)"
            " AND (status <> 'pending' OR dead_lettered_at IS NOT NULL)",
            (transfers,),
        ).fetchone()
        return row is not None and row[0] == len(transfers)

    with (
        caplog.at_level(logging.WARNING),
        psycopg.connect(budget_settings.database_url) as holder,
        running_worker(broker, threads=4),
        Sweeper(sweeper_pool, budget_settings, broker) as sweeper,
    ):
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (held,))
        for group in groups[:half]:
            broker.send_batches(group)
        # More load arrives while the first transfers are in their retries.
        wait_until(
            lambda: db.execute(
                "SELECT 1 FROM transfers WHERE id = ANY(%s) AND failed_attempts > 0",
                (transfers,),
            ).fetchone(),
            timeout=30,
            what="a transfer is being retried",
        )
        for group in groups[half:]:
            broker.send_batches(group)
        wait_until(settled_or_dead_lettered, timeout=90, what="every transfer is settled or dead")
        # The lock is still held: further sweeps and any retries still queued change nothing.
        passes = sweeper.passes
        wait_until(lambda: sweeper.passes >= passes + 5, timeout=30, what="five more sweeps")
        join_queue(broker)
        holder.rollback()

    rows = {tid: transfer_row(db, tid) for tid in transfers}
    assert max(row["attempts"] for row in rows.values()) <= MAX_RETRIES + 1
    for tid in touching_held:
        row = rows[tid]
        assert (row["status"], row["dead_lettered_at"] is not None) == ("pending", True)
        assert (row["attempts"], row["failed_attempts"]) == (MAX_RETRIES + 1, MAX_RETRIES + 1)
    # A batch that met the held account settled its other transfers all the same.
    assert {tid for tid, row in rows.items() if row["status"] != "settled"} == touching_held
    # Dead-lettered once each: one mark, one line. A message goes to the dead-letter queue
    # only when it spent a transfer's budget itself, so there are no more of them than
    # transfers dead-lettered (a message that met a transfer already dead-lettered by
    # another, such as the sweeper's after a late retry, carries it there too).
    assert dead_letter_lines(caplog) == dict.fromkeys(touching_held, 1)
    assert not [r for r in caplog.records if "could not be dead-lettered" in r.getMessage()]
    carried: dict[str, set[int]] = {}
    for tid, message_ids in broker.dead_letters().items():
        for mid in message_ids:
            carried.setdefault(mid, set()).add(tid)
    assert carried, "no message was dead-lettered"
    assert all(tids & touching_held for tids in carried.values())
    assert len(carried) <= len(touching_held)


def test_a_transfer_carried_by_several_messages_is_attempted_within_one_budget(
    db: psycopg.Connection,
    budget_settings: Settings,
    broker: SettleBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    treasury, payer, payee = (make_account(db, treasury=True), make_account(db), make_account(db))
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 100)

    with (
        caplog.at_level(logging.WARNING),
        psycopg.connect(budget_settings.database_url) as holder,
        running_worker(broker, threads=4),
    ):
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (payer,))
        # The web's message, a client's replay, a redelivery: three chains on today's main.
        for _ in range(3):
            broker.send_batches([transfer])
        join_queue(broker)
        # A replay after it was dead-lettered is not attempted either.
        broker.send_batches([transfer])
        join_queue(broker)
        holder.rollback()

    row = transfer_row(db, transfer)
    assert (row["status"], row["dead_lettered_at"] is not None) == ("pending", True)
    assert row["attempts"] == MAX_RETRIES + 1
    assert dead_letter_lines(caplog) == {transfer: 1}
    assert {tid: len(mids) for tid, mids in broker.dead_letters().items()} == {transfer: 1}


def test_a_retry_whose_message_is_lost_waits_out_its_backoff_then_the_sweeper_sends_it(
    db: psycopg.Connection,
    budget_settings: Settings,
    sweeper_pool: ConnectionPool,
) -> None:
    # A backoff of a minute: the retry sits in the broker's delay queue.
    slow = budget_settings.with_(transfer_min_backoff_ms=60_000, transfer_max_backoff_ms=60_000)
    treasury, payer, payee = (make_account(db, treasury=True), make_account(db), make_account(db))
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 100)
    stale = "UPDATE transfers SET enqueued_at = now() - interval '1 hour' WHERE id = %s"

    with broker_for(slow) as broker:
        with psycopg.connect(slow.database_url) as holder, running_worker(broker):
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (payer,))
            broker.send_batches([transfer])
            wait_until(
                lambda: transfer_row(db, transfer)["failed_attempts"] == 1,
                timeout=30,
                what="the first attempt failed",
            )
            holder.rollback()
            # Sent long ago, but waiting out its retry: the sweeper leaves it alone.
            db.execute(stale, (transfer,))
            assert sweep_once(sweeper_pool, slow, broker) == 0
            assert transfer not in queued_transfer_ids(broker)
        # The broker loses the retry (a flush, a failover without persistence).
        broker.flush_all()
        row = transfer_row(db, transfer)
        assert row["retry_message"] is not None and row["next_attempt_at"] is not None
        # Its backoff is over and the grace period too: the sweeper sends it, once.
        db.execute(
            "UPDATE transfers SET next_attempt_at = now() - interval '1 minute' WHERE id = %s",
            (transfer,),
        )
        assert sweep_once(sweeper_pool, slow, broker) == 1
        assert sweep_once(sweeper_pool, slow, broker) == 0
        with running_worker(broker):
            join_queue(broker)

    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("settled", 2)
