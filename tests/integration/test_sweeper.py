"""The sweeper re-sends transfers left pending without a message, against the real database
and the real Redis broker; an in-process worker then settles them."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.broker.messages import TRANSFER_QUEUE
from shared.config import Settings
from tests.helpers import (
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
from worker.actors import settle_transfer
from worker.sweeper import sweep_once

#: The broker conftest installed: the one the actor is declared on.
broker = settle_transfer.broker

GRACE = 60.0


@pytest.fixture(scope="module")
def sweeper_pool(settings: Settings) -> Iterator[ConnectionPool]:
    """The sweeper's one-connection pool."""
    with opened_pool(settings, "sweeper", size=1) as pool:
        yield pool


@pytest.fixture(scope="module", autouse=True)
def empty_queue() -> None:
    """Messages earlier modules left behind are dropped, so that joins wait for ours only."""
    broker.flush_all()


@pytest.fixture
def sweeper_settings(settings: Settings) -> Settings:
    return settings.with_(sweeper_grace_seconds=GRACE)


@pytest.fixture
def payer_and_payee(db: psycopg.Connection) -> tuple[int, int]:
    treasury, payer, payee = make_account(db, treasury=True), make_account(db), make_account(db)
    fund(db, treasury, payer, 5_000)
    return payer, payee


def backdate(conn: psycopg.Connection, transfer_id: int, seconds: float) -> None:
    """Pretend the transfer's last message was sent `seconds` ago."""
    conn.execute(
        "UPDATE transfers SET enqueued_at = now() - make_interval(secs => %s) WHERE id = %s",
        (seconds, transfer_id),
    )


def test_a_pending_transfer_without_a_message_is_resent_after_the_grace_period_and_settles(
    db: psycopg.Connection,
    sweeper_pool: ConnectionPool,
    sweeper_settings: Settings,
    payer_and_payee: tuple[int, int],
) -> None:
    payer, payee = payer_and_payee
    transfer = submit(db, payer, payee, 1_200)  # recorded pending; no message was sent

    sweep_once(sweeper_pool, sweeper_settings, broker)
    assert transfer not in queued_transfer_ids(broker)  # still within its grace period

    backdate(db, transfer, GRACE + 5)
    assert sweep_once(sweeper_pool, sweeper_settings, broker) >= 1
    assert queued_transfer_ids(broker).count(transfer) == 1

    # Re-sent just now, so the next sweep leaves it alone for another grace period.
    sweep_once(sweeper_pool, sweeper_settings, broker)
    assert queued_transfer_ids(broker).count(transfer) == 1

    with running_worker(broker):
        join_queue(broker)
    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("settled", 1)
    assert entry_amounts(db, transfer) == [(payer, -1_200), (payee, 1_200)]


def test_a_message_lost_by_the_broker_is_redriven_by_the_sweeper(
    db: psycopg.Connection,
    sweeper_pool: ConnectionPool,
    sweeper_settings: Settings,
    payer_and_payee: tuple[int, int],
) -> None:
    payer, payee = payer_and_payee
    transfer = submit(db, payer, payee, 700)
    settle_transfer.send(transfer)
    assert transfer in queued_transfer_ids(broker)

    # The broker loses the queue (a flush, a failover without persistence, a lost vhost).
    broker.flush(TRANSFER_QUEUE)
    assert transfer not in queued_transfer_ids(broker)
    with running_worker(broker):
        join_queue(broker)
    assert transfer_row(db, transfer)["status"] == "pending"  # stranded

    backdate(db, transfer, GRACE + 5)
    sweep_once(sweeper_pool, sweeper_settings, broker)
    assert queued_transfer_ids(broker).count(transfer) == 1

    with running_worker(broker):
        join_queue(broker)
    row = transfer_row(db, transfer)
    assert (row["status"], row["attempts"]) == ("settled", 1)
    assert entry_amounts(db, transfer) == [(payer, -700), (payee, 700)]


def test_a_transfer_settled_meanwhile_is_not_resent(
    db: psycopg.Connection,
    sweeper_pool: ConnectionPool,
    sweeper_settings: Settings,
    payer_and_payee: tuple[int, int],
) -> None:
    payer, payee = payer_and_payee
    transfer = submit(db, payer, payee, 300)
    settle_transfer.send(transfer)
    with running_worker(broker):
        join_queue(broker)
    assert transfer_row(db, transfer)["status"] == "settled"

    backdate(db, transfer, GRACE + 5)
    sweep_once(sweeper_pool, sweeper_settings, broker)
    assert transfer not in queued_transfer_ids(broker)


def test_stale_transfers_are_resent_together_in_one_message(
    db: psycopg.Connection,
    sweeper_pool: ConnectionPool,
    sweeper_settings: Settings,
    payer_and_payee: tuple[int, int],
) -> None:
    payer, payee = payer_and_payee
    transfers = [submit(db, payer, payee, amount) for amount in (100, 200, 300)]
    for transfer in transfers:
        backdate(db, transfer, GRACE + 5)
    messages = broker.client.hlen(f"{broker.namespace}:transfers.msgs")

    assert sweep_once(sweeper_pool, sweeper_settings, broker) >= 3

    assert broker.client.hlen(f"{broker.namespace}:transfers.msgs") == messages + 1
    assert [t for t in queued_transfer_ids(broker) if t in transfers] == transfers
    with running_worker(broker):
        join_queue(broker)
    assert [transfer_row(db, t)["status"] for t in transfers] == ["settled"] * 3
