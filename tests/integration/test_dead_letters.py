"""Dead letters on the real database and each real broker (Redis, RabbitMQ): a transfer whose
retries run out is dead-lettered (marked in Postgres, its message in dramatiq's dead-letter
queue),
the sweeper leaves it alone, and `settle dead-letters` lists it and sends it again.

Each test runs the actor on a broker of its own namespace with a short lock timeout, two
retries and a short backoff, and makes settlement fail by holding a lock on the payer."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import dramatiq
import falcon.testing
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.broker.redis_broker import SettleRedisBroker
from shared.config import Settings
from shared.ledger import dead_letters
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.testing.scratch import scratch_database
from tests.helpers import (
    balance,
    entry_amounts,
    fund,
    join_queue,
    make_account,
    opened_pool,
    queued_transfer_ids,
    running_worker,
    submit,
    transfer_row,
)
from tests.scratch import settle
from worker.actors import create_broker, settle_transfer, settle_transfers
from worker.sweeper import DeadLetterClearing, sweep_once


@pytest.fixture
def scratch(settings: Settings) -> Iterator[str]:
    """A database of its own: `retry --all` and `list` see every dead-lettered transfer."""
    with scratch_database(settings.database_url) as url:
        yield url


@pytest.fixture
def db(scratch: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the scratch database, whose ledger must balance at the end."""
    with psycopg.connect(scratch, autocommit=True) as conn:
        yield conn
        assert find_violations(conn) == []


@pytest.fixture
def short_settings(settings: Settings, scratch: str, broker_url: str) -> Settings:
    """On each broker in turn (tests/conftest.py's `broker_url`)."""
    return settings.with_(
        database_url=scratch,
        broker_url=broker_url,
        broker_namespace=f"{settings.broker_namespace}-dl-{uuid.uuid4().hex[:6]}",
        lock_timeout_ms=100,
        transfer_max_retries=2,
        transfer_min_backoff_ms=20,
        transfer_max_backoff_ms=100,
        sweeper_grace_seconds=60,
    )


@pytest.fixture
def short_broker(short_settings: Settings) -> Iterator[SettleBroker]:
    """The settle actor on a broker of its own namespace, or vhost (dropped afterwards)."""
    built, _ = create_broker(short_settings)
    built.declare_actor(settle_transfer)
    built.declare_actor(settle_transfers)
    yield built
    if isinstance(built, SettleRedisBroker):
        keys = list(built.client.scan_iter(match=f"{built.namespace}*", count=1000))
        if keys:
            built.client.delete(*keys)
    built.close()


@pytest.fixture
def accounts(db: psycopg.Connection) -> tuple[int, int]:
    treasury, payer, payee = make_account(db, treasury=True), make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    return payer, payee


def dead_letter(
    db: psycopg.Connection, settings: Settings, broker: dramatiq.Broker, payer: int, payee: int
) -> int:
    """A transfer that ran out of retries while another transaction held its payer."""
    transfer = submit(db, payer, payee, 250)
    with psycopg.connect(settings.database_url) as holder, running_worker(broker):
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
        broker.enqueue(settle_transfer.message(transfer))
        join_queue(broker)  # returns once the message is dead-lettered
        holder.rollback()
    return transfer


def settle_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "BROKER_NAMESPACE": settings.broker_namespace,
        "BROKER_URL": settings.message_broker_url,
    }


def test_a_transfer_whose_retries_run_out_is_dead_lettered_with_its_message(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    accounts: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        transfer = dead_letter(db, short_settings, short_broker, *accounts)

    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("pending", 3)  # the first try and two retries
    assert row["dead_lettered_at"] is not None
    assert "LockNotAvailable" in str(row["last_error"])
    assert list(short_broker.dead_letters()) == [transfer]
    assert entry_amounts(db, transfer) == []
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert (
        "ERROR",
        f"transfer {transfer}: dead-lettered after 3 attempt(s): {row['last_error']}",
    ) in logged
    # Transient failures are expected: a warning each, no traceback from dramatiq.
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("dramatiq")]


def test_an_error_not_worth_retrying_dead_letters_the_transfer_at_once(
    db: psycopg.Connection, short_broker: SettleBroker, accounts: tuple[int, int]
) -> None:
    payer, payee = accounts
    transfer = submit(db, payer, payee, 100)
    # A constraint the settlement's credit entry breaks: an integrity error, not transient.
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    db.execute(
        sql.SQL("ALTER TABLE entries ADD CONSTRAINT {} CHECK (account_id <> {}) NOT VALID").format(
            sql.Identifier(name), sql.Literal(payee)
        )
    )
    try:
        with running_worker(short_broker):
            short_broker.enqueue(settle_transfer.message(transfer))
            join_queue(short_broker)
    finally:
        db.execute(sql.SQL("ALTER TABLE entries DROP CONSTRAINT {}").format(sql.Identifier(name)))

    row = transfer_row(db, transfer)
    assert (row["status"], row["dead_lettered_at"] is not None) == ("pending", True)
    assert str(row["last_error"]).startswith("CheckViolation:")
    assert row["attempts"] == 0  # not counted as a transient failure, and never retried
    assert list(short_broker.dead_letters()) == [transfer]


def test_insufficient_funds_is_a_final_outcome_and_never_a_dead_letter(
    db: psycopg.Connection, short_broker: SettleBroker, accounts: tuple[int, int]
) -> None:
    payer, payee = accounts
    transfer = submit(db, payer, payee, 5_000)

    with running_worker(short_broker):
        short_broker.enqueue(settle_transfer.message(transfer))
        join_queue(short_broker)

    row = transfer_row(db, transfer)
    assert (row["status"], row["failure_code"], row["attempts"]) == (
        "failed",
        "insufficient_funds",
        1,
    )
    assert row["dead_lettered_at"] is None
    assert short_broker.dead_letters() == {}


@pytest.fixture
def sweeper_pool(short_settings: Settings) -> Iterator[ConnectionPool]:
    with opened_pool(short_settings, "sweeper", size=1) as pool:
        yield pool


def test_the_sweeper_leaves_a_dead_lettered_transfer_alone_until_it_is_released(
    db: psycopg.Connection,
    short_settings: Settings,
    sweeper_pool: ConnectionPool,
    accounts: tuple[int, int],
) -> None:
    broker = settle_transfer.broker

    broker.flush_all()
    payer, payee = accounts
    transfer = submit(db, payer, payee, 300)
    assert dead_letters.mark(db, transfer, "OperationalError: the server closed the connection")
    stale = "UPDATE transfers SET enqueued_at = now() - interval '1 hour' WHERE id = %s"
    db.execute(stale, (transfer,))

    sweep_once(sweeper_pool, short_settings, broker)
    assert transfer not in queued_transfer_ids(broker)

    assert dead_letters.release(db, [transfer]) == [transfer]
    db.execute(stale, (transfer,))
    sweep_once(sweeper_pool, short_settings, broker)
    assert queued_transfer_ids(broker).count(transfer) == 1
    broker.flush_all()
    assert transfer_row(db, transfer)["dead_lettered_at"] is None


def test_the_dead_letters_command_lists_a_dead_lettered_transfer_and_retries_it_until_it_settles(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    accounts: tuple[int, int],
) -> None:
    payer, payee = accounts
    transfer = dead_letter(db, short_settings, short_broker, payer, payee)
    env = settle_env(short_settings)

    listed = settle("dead-letters", "list", env=env)
    assert listed.returncode == 0, listed.stdout
    line = next(x for x in listed.stdout.splitlines() if x.startswith(f"transfer {transfer}:"))
    assert f"2.50 EUR from account {payer} to {payee}, 3 attempt(s)" in line
    assert "message in the dead-letter queue; last error: LockNotAvailable" in line

    retried = settle("dead-letters", "retry", str(transfer), env=env)
    assert retried.returncode == 0, retried.stdout
    assert f"transfer {transfer}: sent again" in retried.stdout.splitlines()

    assert transfer_row(db, transfer)["dead_lettered_at"] is None
    assert short_broker.dead_letters() == {}  # the old message is dropped...
    assert queued_transfer_ids(short_broker) == [transfer]  # ...and a fresh one sent
    with running_worker(short_broker):
        join_queue(short_broker)
    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("settled", 4)
    assert (balance(db, payer), balance(db, payee)) == (750, 250)

    again = settle("dead-letters", "retry", str(transfer), env=env)
    assert again.returncode == 1
    assert f"transfer {transfer}: not dead-lettered (settled); skipped" in again.stdout


def test_retrying_all_dead_letters_sends_every_dead_lettered_transfer_and_empties_the_queue(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    accounts: tuple[int, int],
) -> None:
    payer, payee = accounts
    first = dead_letter(db, short_settings, short_broker, payer, payee)
    second = dead_letter(db, short_settings, short_broker, payer, payee)
    # A message that carries a dead-lettered transfer (a client's replay) leaves it alone...
    with running_worker(short_broker):
        short_broker.enqueue(settle_transfer.message(first))
        join_queue(short_broker)
    row = transfer_row(db, first)
    assert (row["status"], row["attempts"], row["dead_lettered_at"] is not None) == (
        "pending",
        3,
        True,
    )
    # ...and once it is released and settles, its dead letter is stale.
    assert dead_letters.release(db, [first]) == [first]
    with running_worker(short_broker):
        short_broker.enqueue(settle_transfer.message(first))
        join_queue(short_broker)
    assert transfer_row(db, first)["status"] == "settled"
    env = settle_env(short_settings)
    listed = settle("dead-letters", "list", env=env)
    assert "dead letters: 1 transfer(s); 2 message(s) in the dead-letter queue" in listed.stdout
    assert "1 message(s) in the dead-letter queue carry no dead-lettered transfer" in listed.stdout

    retried = settle("dead-letters", "retry", "--all", env=env)

    assert retried.returncode == 0, retried.stdout
    assert retried.stdout.splitlines() == [
        f"transfer {second}: sent again",
        "2 dead-letter message(s) dropped",  # `second`'s, and the stale one of `first`
        "1 transfer(s) sent again",
    ]
    assert short_broker.dead_letters() == {}
    assert queued_transfer_ids(short_broker) == [second]
    with running_worker(short_broker):
        join_queue(short_broker)
    assert [transfer_row(db, t)["status"] for t in (first, second)] == ["settled", "settled"]
    assert dead_letters.rows(db) == []


def test_a_dead_letter_carrying_several_transfers_stays_until_none_of_them_is_dead_lettered(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    accounts: tuple[int, int],
) -> None:
    payer, payee = accounts
    first, second = submit(db, payer, payee, 100), submit(db, payer, payee, 200)
    with psycopg.connect(short_settings.database_url) as holder, running_worker(short_broker):
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
        short_broker.send_batches([first, second])
        join_queue(short_broker)  # returns once the message is dead-lettered
        holder.rollback()
    assert [transfer_row(db, t)["dead_lettered_at"] is not None for t in (first, second)] == [
        True,
        True,
    ]
    held = short_broker.dead_letters()
    assert sorted(held) == [first, second] and held[first] == held[second]  # one message
    env = settle_env(short_settings)

    retried = settle("dead-letters", "retry", str(first), env=env)
    assert retried.returncode == 0, retried.stdout
    assert short_broker.dead_letters() == held  # kept: `second` is still dead-lettered
    assert queued_transfer_ids(short_broker) == [first]

    retried = settle("dead-letters", "retry", str(second), env=env)
    assert retried.returncode == 0, retried.stdout
    assert short_broker.dead_letters() == {}
    assert queued_transfer_ids(short_broker) == [first, second]
    with running_worker(short_broker):
        join_queue(short_broker)
    assert [transfer_row(db, t)["status"] for t in (first, second)] == ["settled", "settled"]
    assert (balance(db, payer), balance(db, payee)) == (700, 300)


def test_status_and_the_list_give_one_count_and_the_last_cancel_drops_the_batchs_message(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    accounts: tuple[int, int],
) -> None:
    payer, payee = accounts
    first, second = submit(db, payer, payee, 100), submit(db, payer, payee, 200)
    with psycopg.connect(short_settings.database_url) as holder, running_worker(short_broker):
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
        short_broker.send_batches([first, second])
        join_queue(short_broker)  # returns once the message is dead-lettered
        holder.rollback()
    env = settle_env(short_settings)
    count = "dead letters: 2 transfer(s); 1 message(s) in the dead-letter queue"

    status = settle("status", env=env)
    assert status.returncode == 1, status.stdout
    assert count in status.stdout.splitlines()
    assert "ATTENTION: 2 dead-lettered transfer(s)" in status.stdout
    listed = settle("dead-letters", "list", env=env)
    assert count in listed.stdout.splitlines()

    assert settle("dead-letters", "retry", str(first), env=env).returncode == 0
    assert sorted(short_broker.dead_letters()) == [first, second]  # `second` is still in it
    # Cancelling cannot be undone: without a terminal it needs --yes, and changes nothing.
    refused = settle("dead-letters", "cancel", str(second), env=env)
    assert refused.returncode == 2
    assert "add --yes to confirm" in refused.stdout
    assert transfer_row(db, second)["dead_lettered_at"] is not None
    cancelled = settle("dead-letters", "cancel", str(second), "--yes", env=env)
    assert cancelled.returncode == 0, cancelled.stdout
    assert f"transfer {second}: cancelled (failed, cancelled_by_operator)" in cancelled.stdout
    assert short_broker.dead_letters() == {}  # none of its transfers is dead-lettered now
    row = transfer_row(db, second)
    assert (row["status"], row["failure_code"]) == ("failed", "cancelled_by_operator")
    logged = settle("audit-log", "--transfer", str(second), env=env)
    assert f"the command line  cancel 1 transfer(s): {second}" in logged.stdout

    with running_worker(short_broker):
        join_queue(short_broker)
    assert transfer_row(db, first)["status"] == "settled"
    status = settle("status", env=env)
    assert status.returncode == 0, status.stdout
    assert "dead letters: 0 transfer(s); 0 message(s) in the dead-letter queue" in status.stdout
    assert (balance(db, payer), balance(db, payee)) == (900, 100)


def test_cancelling_by_the_dashboards_filters_and_the_sweeper_drops_a_message_left_behind(
    db: psycopg.Connection,
    short_settings: Settings,
    short_broker: SettleBroker,
    sweeper_pool: ConnectionPool,
    accounts: tuple[int, int],
) -> None:
    payer, payee = accounts
    first = dead_letter(db, short_settings, short_broker, payer, payee)
    second = dead_letter(db, short_settings, short_broker, payer, payee)
    env = settle_env(short_settings)

    none = settle("dead-letters", "cancel", "--account", str(payer), "--max-amount", "100",
                  "--yes", env=env)  # fmt: skip
    assert none.returncode == 0, none.stdout
    assert "0 transfer(s) cancelled" in none.stdout
    done = settle("dead-letters", "cancel", "--account", str(payer), "--yes", env=env)
    assert done.returncode == 0, done.stdout
    assert [transfer_row(db, t)["failure_code"] for t in (first, second)] == [
        "cancelled_by_operator"
    ] * 2
    assert short_broker.dead_letters() == {}
    typo = settle("dead-letters", "cancel", "--acount", str(payer), "--yes", env=env)
    assert typo.returncode == 2

    # A transfer released behind the commands' back (say, a broker failure as they dropped
    # its message) leaves a message no one needs: no attention, and the sweeper drops it.
    third = dead_letter(db, short_settings, short_broker, payer, payee)
    assert dead_letters.release(db, [third]) == [third]
    status = settle("status", env=env)
    assert status.returncode == 0, status.stdout
    assert "dead letters: 0 transfer(s); 1 message(s) in the dead-letter queue" in status.stdout
    assert DeadLetterClearing()(sweeper_pool, short_broker) == 1
    assert short_broker.dead_letters() == {}


def test_retrying_or_cancelling_needs_ids_all_or_filters_and_only_one_of_them() -> None:
    for action in ("retry", "cancel"):
        for args in ([], ["--all", "7"], ["--all", "--account", "7"]):
            done = settle("dead-letters", action, *args, env=os.environ)
            assert done.returncode == 2, (action, args, done.stdout)
            assert "give transfer ids, --all, or filters (one of the three)" in done.stdout
        malformed = settle("dead-letters", action, "--user", "x", env=os.environ)
        assert malformed.returncode == 2
        assert "user must be a whole number" in malformed.stdout


def test_get_transfer_shows_when_a_transfer_was_dead_lettered_until_it_settles(
    settings: Settings, client: falcon.testing.TestClient
) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        treasury, payee = make_account(conn, treasury=True), make_account(conn)
        transfer = submit(conn, treasury, payee, 100)
        assert dead_letters.mark(
            conn, transfer, "OperationalError: the server closed the connection"
        )
        dead = client.simulate_get(f"/transfers/{transfer}").json["data"]
        assert dead_letters.release(conn, [transfer]) == [transfer]
        assert ledger.settle_transfer(conn, transfer) == ("settled", None)
        settled = client.simulate_get(f"/transfers/{transfer}").json["data"]

    assert dead["status"] == "pending"
    assert datetime.fromisoformat(dead["dead_lettered_at"]) <= datetime.now(UTC)
    assert "last_error" not in dead  # driver errors name hosts: for operators only
    assert (settled["status"], settled["dead_lettered_at"]) == ("settled", None)
