"""The settle actor run by an in-process dramatiq Worker, against the real database and the
real Redis broker (the one `worker.dramatiq_entry:boot` installs for dramatiq)."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import psycopg
import pytest
from dramatiq.middleware import Middleware, TimeLimit

from shared.broker.messages import transfer_ids
from shared.config import Settings
from shared.ledger import operations as ledger
from tests.helpers import (
    balance,
    entry_amounts,
    fund,
    join_queue,
    make_account,
    running_worker,
    submit,
    transfer_row,
    wait_until,
)
from worker.actors import create_broker, settle_transfer, settle_transfers

#: The broker conftest installed: the one the actors are declared on.
broker = settle_transfer.broker


class RecordedOutcomes(Middleware):
    """Remembers every message a worker finished, with the exception its actor raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: list[tuple[int, BaseException | None]] = []

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            for transfer_id in transfer_ids(message):
                self._outcomes.append((transfer_id, exception))

    def of(self, transfer_id: int) -> list[BaseException | None]:
        """The exception (or None) of each time the actor ran for `transfer_id`."""
        with self._lock:
            return [exc for tid, exc in self._outcomes if tid == transfer_id]


@pytest.fixture(scope="module")
def worker() -> Iterator[dramatiq.Worker]:
    """The real broker consumed by two worker threads for the whole module. Messages earlier
    modules left behind are dropped first, so that joining the queue waits for ours only."""
    broker.flush_all()
    with running_worker(broker, threads=2) as running:
        yield running


@pytest.fixture
def outcomes(worker: dramatiq.Worker) -> Iterator[RecordedOutcomes]:
    recorder = RecordedOutcomes()
    broker.add_middleware(recorder)
    yield recorder
    broker.middleware.remove(recorder)


@pytest.fixture
def treasury(db: psycopg.Connection) -> int:
    return make_account(db, treasury=True)


def test_a_funded_transfer_settles_with_one_debit_and_one_credit(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 10_000)
    transfer = submit(db, payer, payee, 2_500)

    settle_transfer.send(transfer)
    join_queue(broker)

    row = transfer_row(db, transfer)
    assert (row["status"], row["failure_code"], row["attempts"]) == ("settled", None, 1)
    assert row["settled_at"] is not None
    assert (balance(db, payer), balance(db, payee)) == (7_500, 2_500)
    assert entry_amounts(db, transfer) == [(payer, -2_500), (payee, 2_500)]
    assert outcomes.of(transfer) == [None]


def test_insufficient_funds_fails_the_transfer_without_entries_and_is_not_retried(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 5_000)

    settle_transfer.send(transfer)
    join_queue(broker)

    row = transfer_row(db, transfer)
    assert (row["status"], row["failure_code"]) == ("failed", "insufficient_funds")
    assert (row["attempts"], row["last_error"], row["settled_at"]) == (1, None, None)
    assert entry_amounts(db, transfer) == []
    assert (balance(db, payer), balance(db, payee)) == (1_000, 0)
    # The actor ran once and returned normally: nothing for the Retries middleware to retry.
    assert outcomes.of(transfer) == [None]


def test_a_message_delivered_twice_settles_the_transfer_once(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 10_000)
    transfer = submit(db, payer, payee, 3_000)

    settle_transfer.send(transfer)
    settle_transfer.send(transfer)
    join_queue(broker)
    settled = transfer_row(db, transfer)

    settle_transfer.send(transfer)
    join_queue(broker)

    assert (settled["status"], settled["attempts"]) == ("settled", 1)
    assert transfer_row(db, transfer) == settled
    assert entry_amounts(db, transfer) == [(payer, -3_000), (payee, 3_000)]
    assert (balance(db, payer), balance(db, payee)) == (7_000, 3_000)
    assert outcomes.of(transfer) == [None, None, None]


def test_transfers_both_ways_between_one_pair_all_end_terminal_without_deadlock(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    first, second = make_account(db), make_account(db)
    fund(db, treasury, first, 2_000)
    fund(db, treasury, second, 2_000)
    transfers = []
    for i in range(60):
        transfers.append(submit(db, first, second, 50 + i))
        transfers.append(submit(db, second, first, 40 + 2 * i))

    for transfer in transfers:
        settle_transfer.send(transfer)
    join_queue(broker)

    rows = [transfer_row(db, transfer) for transfer in transfers]
    assert {row["status"] for row in rows} <= {"settled", "failed"}
    assert any(row["status"] == "settled" for row in rows)
    # Not one attempt was a deadlock victim (or any other transient failure) to be retried.
    assert [(row["attempts"], row["last_error"]) for row in rows] == [(1, None)] * len(rows)
    assert all(outcomes.of(transfer) == [None] for transfer in transfers)
    assert balance(db, first) + balance(db, second) == 4_000


def test_the_actor_locks_the_lower_account_id_first_whichever_way_money_moves(
    db: psycopg.Connection, settings: Settings, treasury: int, worker: dramatiq.Worker
) -> None:
    lower, higher = make_account(db), make_account(db)
    assert lower < higher
    fund(db, treasury, higher, 1_000)
    transfer = submit(db, higher, lower, 400)

    with psycopg.connect(settings.database_url) as holder:
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (higher,))
        settle_transfer.send(transfer)
        wait_until(
            lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE %s AND wait_event_type = 'Lock'",
                ("settle:worker:%",),
            ).fetchone()[0],
            timeout=2.0,
            what="the worker waits for the lock on the higher account",
        )
        # While it waits for the higher id, the worker already holds the lower one.
        with pytest.raises(psycopg.errors.LockNotAvailable), db.transaction():
            db.execute("SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE NOWAIT", (lower,))
        holder.rollback()

    join_queue(broker)
    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("settled", 1)
    assert (balance(db, higher), balance(db, lower)) == (600, 400)


def test_the_actor_runs_without_dramatiqs_time_limit(
    db: psycopg.Connection,
    treasury: int,
    outcomes: RecordedOutcomes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The broker the dramatiq CLI loads is the actor's broker, and it has no TimeLimit that
    # could inject an exception into a COMMIT in flight.
    assert dramatiq.get_broker() is settle_transfer.broker is broker
    assert not [m for m in broker.middleware if isinstance(m, TimeLimit)]
    assert "time_limit" not in broker.actor_options

    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 100)
    transfer = submit(db, payer, payee, 100)
    with caplog.at_level(logging.INFO):
        settle_transfer.send(transfer)
        join_queue(broker)

    assert transfer_row(db, transfer)["status"] == "settled"
    assert outcomes.of(transfer) == [None]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL] == []
    assert not [r for r in caplog.records if "TimeLimit" in r.getMessage()]


@pytest.fixture
def quick_settings(settings: Settings, own_broker_url: str) -> Settings:
    """A short lock timeout and backoff, on a broker namespace (or vhost) of its own."""
    return settings.with_(
        broker_url=own_broker_url,
        broker_namespace=f"{settings.broker_namespace}-retry-{uuid.uuid4().hex[:6]}",
        lock_timeout_ms=100,
        transfer_min_backoff_ms=20,
        transfer_max_backoff_ms=200,
    )


@pytest.fixture
def quick_broker(quick_settings: Settings) -> Iterator[dramatiq.Broker]:
    """A second broker running the same actor with `quick_settings`."""
    built, _ = create_broker(quick_settings)
    built.declare_actor(settle_transfer)
    built.declare_actor(settle_transfers)
    yield built
    built.close()


def test_a_transient_database_error_is_retried_until_the_transfer_settles(
    db: psycopg.Connection, settings: Settings, treasury: int, quick_broker: dramatiq.Broker
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 250)

    with running_worker(quick_broker, threads=2):
        with psycopg.connect(settings.database_url) as holder:
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
            quick_broker.enqueue(settle_transfer.message(transfer))
            failed_once = wait_until(
                lambda: transfer_row(db, transfer)["last_error"],
                timeout=10.0,
                what="the first attempt fails on the lock",
            )
            holder.rollback()
        join_queue(quick_broker)

    row = transfer_row(db, transfer)
    assert row["status"] == "settled"
    assert row["attempts"] >= 2
    assert "LockNotAvailable" in str(failed_once)
    assert "lock timeout" in str(row["last_error"])
    assert entry_amounts(db, transfer) == [(payer, -250), (payee, 250)]


def test_a_transfer_that_keeps_failing_is_given_up_after_the_configured_retries(
    db: psycopg.Connection, settings: Settings, quick_settings: Settings, treasury: int
) -> None:
    limited, _ = create_broker(quick_settings.with_(transfer_max_retries=2))
    limited.declare_actor(settle_transfer)
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 250)

    try:
        with (
            psycopg.connect(settings.database_url) as holder,
            running_worker(limited, threads=2),
        ):
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
            limited.enqueue(settle_transfer.message(transfer))
            join_queue(limited)  # returns once the message is dead-lettered
            holder.rollback()
    finally:
        limited.close()

    # The first attempt and exactly two retries; the transfer stays pending, dead-lettered
    # (see test_dead_letters.py).
    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("pending", 3)
    assert "lock timeout" in str(row["last_error"])
    assert entry_amounts(db, transfer) == []


# --- Batches: one message, one transaction, many transfers ------------------------------------


def test_a_batch_settles_each_transfer_in_id_order_with_its_own_outcome(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee, other = make_account(db), make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    first = submit(db, payer, payee, 600)
    second = submit(db, payer, other, 600)  # 400 left after the first: insufficient
    third = submit(db, payer, other, 400)
    refill = submit(db, treasury, payee, 50)

    assert broker.send_batches([third, refill, second, first]) == 1
    join_queue(broker)

    rows = {tid: transfer_row(db, tid) for tid in (first, second, third, refill)}
    assert [(rows[t]["status"], rows[t]["failure_code"]) for t in (first, second, third)] == [
        ("settled", None),
        ("failed", "insufficient_funds"),
        ("settled", None),
    ]
    assert rows[refill]["status"] == "settled"
    assert all(row["attempts"] == 1 and row["last_error"] is None for row in rows.values())
    assert entry_amounts(db, second) == []
    assert entry_amounts(db, first) == [(payer, -600), (payee, 600)]
    assert entry_amounts(db, third) == [(payer, -400), (other, 400)]
    assert (balance(db, payer), balance(db, payee), balance(db, other)) == (0, 650, 400)
    # Insufficient funds is an outcome: the message ran once and was not retried.
    assert outcomes.of(second) == [None]


def test_a_transfer_named_twice_in_one_batch_and_again_later_settles_once(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    transfer = submit(db, payer, payee, 300)

    settle_transfers.send([transfer, transfer, transfer])
    join_queue(broker)
    settled = transfer_row(db, transfer)
    settle_transfers.send([transfer])
    join_queue(broker)

    assert (settled["status"], settled["attempts"]) == ("settled", 1)
    assert transfer_row(db, transfer) == settled
    assert entry_amounts(db, transfer) == [(payer, -300), (payee, 300)]
    assert (balance(db, payer), balance(db, payee)) == (700, 300)


def statuses(outcomes: dict[int, ledger.Outcome]) -> dict[int, tuple[str, str | None]]:
    return {tid: (o.status, o.failure_code) for tid, o in outcomes.items()}


def _waiting_for_a_lock(db: psycopg.Connection, pid: int) -> bool:
    row = db.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return bool(row and row[0])


def test_an_outcome_carries_a_latency_only_when_this_call_decided_it(
    db: psycopg.Connection, treasury: int
) -> None:
    # What the workers count in settle_transfers_finished_total: each decision once, never
    # the redelivery of a transfer already final.
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 100)
    paid, refused = submit(db, payer, payee, 60), submit(db, payer, payee, 60)

    first = ledger.settle_transfers(db, [paid, refused])
    again = ledger.settle_transfers(db, [paid, refused])

    assert (
        statuses(first)
        == statuses(again)
        == {
            paid: ("settled", None),
            refused: ("failed", "insufficient_funds"),
        }
    )
    assert [first[paid].latency is not None, first[refused].latency is not None] == [True, True]
    assert [again[paid].latency, again[refused].latency] == [None, None]


def test_a_transfer_in_two_concurrent_batches_gets_exactly_one_outcome(
    db: psycopg.Connection, settings: Settings, treasury: int
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    first, shared, last = (submit(db, payer, payee, amount) for amount in (100, 200, 300))

    with (
        psycopg.connect(settings.database_url) as one,
        psycopg.connect(settings.database_url, autocommit=True) as two,
        ThreadPoolExecutor(1) as pool,
    ):
        # The first batch holds `shared` (and the accounts) in its open transaction...
        assert statuses(ledger.settle_transfers(one, [first, shared])) == {
            first: ("settled", None),
            shared: ("settled", None),
        }
        # ...so the second leaves `shared` to it, and waits only for the accounts.
        second = pool.submit(ledger.settle_transfers, two, [shared, last])
        wait_until(
            lambda: _waiting_for_a_lock(db, two.info.backend_pid),
            timeout=5.0,
            what="the second batch waits for the first's accounts",
        )
        one.commit()
        outcomes = second.result(timeout=10)
        # By then the first has committed: `shared` is reported as the first settled it.
        assert statuses(outcomes) == {shared: ("settled", None), last: ("settled", None)}
        # Only what this batch settled counts towards the settlement latency.
        assert (outcomes[shared].latency, outcomes[last].latency is not None) == (None, True)

    for tid, amount in ((first, 100), (shared, 200), (last, 300)):
        assert (transfer_row(db, tid)["attempts"], entry_amounts(db, tid)) == (
            1,
            [(payer, -amount), (payee, amount)],
        )
    assert (balance(db, payer), balance(db, payee)) == (400, 600)


def test_concurrent_batches_over_shared_accounts_never_deadlock(
    db: psycopg.Connection, settings: Settings, treasury: int
) -> None:
    accounts = [make_account(db) for _ in range(6)]
    for account in accounts:
        fund(db, treasury, account, 5_000)
    rng = random.Random(8)
    transfers = []
    for _ in range(240):
        source, target = rng.sample(accounts, 2)
        transfers.append(submit(db, source, target, rng.randint(1, 3_000)))
    # Overlapping batches in every order, and single ids (the one-transfer function) too.
    batches = [rng.sample(transfers, rng.randint(1, 40)) for _ in range(60)]
    batches += [[tid] for tid in rng.sample(transfers, 40)] + [transfers]
    rng.shuffle(batches)

    def settle(batch: list[int]) -> dict[int, tuple[str, str | None]]:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            if len(batch) == 1:
                return {batch[0]: ledger.settle_transfer(conn, batch[0])}
            return statuses(ledger.settle_transfers(conn, batch))

    with ThreadPoolExecutor(6) as pool:
        # A deadlock would raise psycopg.errors.DeadlockDetected out of result().
        results = [
            future.result(timeout=60) for future in [pool.submit(settle, b) for b in batches]
        ]

    # A transfer another batch holds is left to it: that one gives it its outcome.
    assert all(
        status in ("settled", "failed", "skipped") for r in results for status, _ in r.values()
    )
    rows = [transfer_row(db, tid) for tid in transfers]
    assert {row["status"] for row in rows} <= {"settled", "failed"}
    assert [(row["attempts"], row["last_error"]) for row in rows] == [(1, None)] * len(rows)
    assert sum(balance(db, account) for account in accounts) == 6 * 5_000


def test_a_batch_that_keeps_failing_settles_what_it_can_then_dead_letters_the_rest(
    db: psycopg.Connection, settings: Settings, quick_settings: Settings, treasury: int
) -> None:
    limited, _ = create_broker(quick_settings.with_(transfer_max_retries=1))
    limited.declare_actor(settle_transfers)
    payer, payee, other = make_account(db), make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    fund(db, treasury, other, 1_000)
    blocked = [submit(db, payer, payee, 100), submit(db, payee, payer, 1)]
    done = submit(db, other, payee, 100)
    ledger.settle_transfer(db, done)

    try:
        with (
            psycopg.connect(settings.database_url) as holder,
            running_worker(limited, threads=2),
        ):
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
            limited.send_batches([*blocked, done])
            join_queue(limited)  # returns once the message is dead-lettered
            holder.rollback()
    finally:
        limited.close()
        limited.client.connection_pool.disconnect()  # dramatiq's close() leaves it open

    for tid in blocked:
        row = transfer_row(db, tid)
        assert (row["status"], row["attempts"]) == ("pending", 2)
        assert row["dead_lettered_at"] is not None
        assert "lock timeout" in str(row["last_error"])
    row = transfer_row(db, done)
    assert (row["status"], row["attempts"], row["dead_lettered_at"]) == ("settled", 1, None)


def _sent_long_ago(db: psycopg.Connection, transfer_ids: list[int]) -> None:
    """Make `transfer_ids` the pending transfers sent longest ago, in their order: older
    than anything earlier tests of the session left pending."""
    db.execute(
        "UPDATE transfers t SET enqueued_at = now() - interval '1 day' + n * interval '1 second'"
        " FROM unnest(%s::bigint[]) WITH ORDINALITY AS x(id, n) WHERE t.id = x.id",
        (transfer_ids,),
    )


def test_a_batch_is_topped_up_with_the_pending_transfers_sent_longest_ago(
    db: psycopg.Connection, treasury: int
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 10_000)
    oldest, older, old = (submit(db, payer, payee, 100) for _ in range(3))
    _sent_long_ago(db, [oldest, older, old])
    new = submit(db, payer, payee, 100)

    outcomes = ledger.settle_transfers(db, [new], fill=3)

    # Its own id, and the two that waited longest; the third is left for the next batch.
    assert statuses(outcomes) == {
        new: ("settled", None),
        oldest: ("settled", None),
        older: ("settled", None),
    }
    assert all(outcome.latency is not None for outcome in outcomes.values())
    assert transfer_row(db, old)["status"] == "pending"
    assert (balance(db, payer), balance(db, payee)) == (9_700, 300)
    assert statuses(ledger.settle_transfers(db, [old])) == {old: ("settled", None)}


def test_topping_up_skips_what_another_settlement_holds_or_another_message_is_to_retry(
    db: psycopg.Connection, settings: Settings, treasury: int
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 10_000)
    held, retried, last_chance, free = (submit(db, payer, payee, 100) for _ in range(4))
    _sent_long_ago(db, [held, retried, last_chance, free])
    max_attempts = ledger.DEFAULT_RETRY.max_attempts
    # Another message's retry is due later; another transfer has one attempt left, which
    # only a message carrying it may spend (so that the message dead-lettering it is its).
    db.execute(
        "UPDATE transfers SET failed_attempts = 1, next_attempt_at = now() + interval '1 hour',"
        " retry_message = 'another-message' WHERE id = %s",
        (retried,),
    )
    db.execute(
        "UPDATE transfers SET failed_attempts = %s WHERE id = %s", (max_attempts - 1, last_chance)
    )
    new = submit(db, payer, payee, 100)

    with psycopg.connect(settings.database_url) as other:
        other.execute("SELECT 1 FROM transfers WHERE id = %s FOR NO KEY UPDATE", (held,))
        outcomes = ledger.settle_transfers(db, [new], fill=100, message_id="this-message")
        other.rollback()

    assert {new, free} <= set(outcomes)
    assert not {held, retried, last_chance} & set(outcomes)
    assert [transfer_row(db, tid)["status"] for tid in (held, retried, last_chance)] == [
        "pending"
    ] * 3
    # Each still settles when its own message comes.
    assert statuses(
        ledger.settle_transfers(db, [held, retried, last_chance], message_id="another-message")
    ) == dict.fromkeys((held, retried, last_chance), ("settled", None))


def test_one_message_of_one_id_settles_the_backlog_it_finds(
    db: psycopg.Connection, treasury: int, outcomes: RecordedOutcomes
) -> None:
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 10_000)
    # Accepted, never sent: as a backlog of web's messages looks to the message behind it.
    backlog = [submit(db, payer, payee, 100) for _ in range(5)]
    _sent_long_ago(db, backlog)
    last = submit(db, payer, payee, 100)

    settle_transfers.send([last])
    join_queue(broker)

    for tid in [*backlog, last]:
        assert (transfer_row(db, tid)["status"], entry_amounts(db, tid)) == (
            "settled",
            [(payer, -100), (payee, 100)],
        )
    assert (balance(db, payer), balance(db, payee)) == (9_400, 600)
    assert outcomes.of(last) == [None]
