"""Atomic batches (`"atomic": true`): accepted whole or not at all, then settled together or
failed together, through the real app, the real settle function and the real broker."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import operations as ledger
from tests.helpers import (
    balance,
    entry_amounts,
    fund,
    join_queue,
    make_account,
    new_key,
    row_counts,
    running_worker,
    transfer_row,
)
from tests.integration.test_transfer_batches import codes, item, post_batch, statuses
from worker.actors import settle_transfer

broker = settle_transfer.broker


@pytest.fixture
def trio(db: psycopg.Connection) -> tuple[int, int, int]:
    """Three EUR accounts: the first holds 1,000, the others nothing."""
    treasury = make_account(db, treasury=True)
    a, b, c = make_account(db), make_account(db), make_account(db)
    fund(db, treasury, a, 1_000)
    return a, b, c


def ids_of(resp) -> list[int]:
    return [result["data"]["id"] for result in resp.json["data"]]


def chain_of(db: psycopg.Connection, transfer_ids: list[int]) -> set[int | None]:
    rows = db.execute(
        "SELECT DISTINCT chain_id FROM transfers WHERE id = ANY(%s)", (transfer_ids,)
    ).fetchall()
    return {row[0] for row in rows}


def events_of(db: psycopg.Connection, transfer_id: int) -> list[tuple[str, str | None]]:
    rows = db.execute(
        "SELECT type, failure_code FROM transfer_events WHERE transfer_id = %s ORDER BY id",
        (transfer_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def test_an_atomic_batch_with_one_bad_item_records_none_and_says_which_failed(
    client: TestClient, db: psycopg.Connection, trio: tuple[int, int, int], sent: list[int]
) -> None:
    a, b, c = trio
    items = [item(a, b, 100), item(a, a, 100), item(b, c, 50), item(a, 2**62, 1)]
    counts, already_sent = row_counts(db), len(sent)

    resp = post_batch(client, {"transfers": items, "atomic": True})

    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "batch_refused"
    assert statuses(resp) == [424, 422, 424, 422]
    assert codes(resp) == ["not_attempted", "same_account", "not_attempted", "account_not_found"]
    assert row_counts(db) == counts
    assert len(sent) == already_sent
    # The same batch without its atomic flag records the two good ones.
    loose = post_batch(client, {"transfers": items})
    assert statuses(loose) == [202, 422, 202, 422]


def test_an_atomic_batch_is_one_chain_and_its_retry_answers_the_same_chain(
    client: TestClient, db: psycopg.Connection, trio: tuple[int, int, int], sent: list[int]
) -> None:
    a, b, c = trio
    body = {"transfers": [item(a, b, 300), item(b, c, 200)], "atomic": True}

    first = post_batch(client, body)
    counts = row_counts(db)
    again = post_batch(client, body)

    assert first.status_code == again.status_code == 200
    assert statuses(first) == [202, 202]
    assert again.json == first.json
    assert row_counts(db) == counts
    legs = ids_of(first)
    (chain,) = chain_of(db, legs)
    assert chain is not None
    # One message names the chain: its lowest leg.
    assert sent[-1] == min(legs)


def test_an_atomic_batch_reusing_a_key_of_another_request_is_refused_whole(
    client: TestClient, db: psycopg.Connection, trio: tuple[int, int, int]
) -> None:
    a, b, c = trio
    key = new_key()
    earlier = post_batch(client, {"transfers": [item(a, b, 100, key)]})
    assert statuses(earlier) == [202]
    counts = row_counts(db)

    # The same transfer under the same key, but now as a leg of a chain: a chain is new or
    # replayed whole, so that key is taken.
    resp = post_batch(client, {"transfers": [item(a, b, 100, key), item(b, c, 10)], "atomic": True})

    assert resp.status_code == 422
    assert codes(resp) == ["idempotency_key_reused", "not_attempted"]
    assert row_counts(db) == counts
    assert chain_of(db, ids_of(earlier)) == {None}


def test_a_chain_settles_whole_with_the_balances_its_own_earlier_legs_leave(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int]
) -> None:
    """b holds nothing: its leg to c can pay only because the chain's first leg funds it."""
    a, b, c = trio
    resp = post_batch(client, {"transfers": [item(a, b, 600), item(b, c, 500)], "atomic": True})
    legs = ids_of(resp)

    # Asking for the second leg alone brings the whole chain.
    outcomes = ledger.settle_transfers(db, [legs[1]])

    assert {tid: o.status for tid, o in outcomes.items()} == dict.fromkeys(legs, "settled")
    assert (balance(db, a), balance(db, b), balance(db, c)) == (400, 100, 500)
    assert entry_amounts(db, legs[1]) == [(b, -500), (c, 500)]


def test_a_chain_with_a_leg_lacking_funds_fails_every_leg_and_moves_no_money(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int]
) -> None:
    a, b, c = trio
    resp = post_batch(
        client,
        {
            "transfers": [item(a, b, 600), item(a, c, 300), item(b, c, 700)],
            "atomic": True,
        },
    )
    legs = ids_of(resp)
    before = [balance(db, x) for x in trio]

    outcomes = ledger.settle_transfers(db, [legs[0]])

    # The third leg would take 700 from b, which the chain leaves at 600.
    assert {tid: (o.status, o.failure_code) for tid, o in outcomes.items()} == {
        legs[0]: ("failed", "linked_transfer_failed"),
        legs[1]: ("failed", "linked_transfer_failed"),
        legs[2]: ("failed", "insufficient_funds"),
    }
    assert [balance(db, x) for x in trio] == before
    for leg in legs:
        assert entry_amounts(db, leg) == []
        assert transfer_row(db, leg)["status"] == "failed"
        assert events_of(db, leg)[-1][0] == "transfer.failed"
    # Delivered again, the chain is left as it was decided.
    again = ledger.settle_transfers(db, legs)
    assert {o.latency for o in again.values()} == {None}
    assert [balance(db, x) for x in trio] == before


def test_transfers_outside_the_chain_settle_beside_a_failing_chain_in_one_call(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int]
) -> None:
    a, b, c = trio
    chain = ids_of(
        post_batch(client, {"transfers": [item(a, b, 100), item(c, b, 1)], "atomic": True})
    )
    loose = ids_of(post_batch(client, {"transfers": [item(a, c, 250)]}))

    outcomes = ledger.settle_transfers(db, [*chain, *loose])

    assert outcomes[chain[0]].failure_code == "linked_transfer_failed"
    assert outcomes[chain[1]].failure_code == "insufficient_funds"
    assert outcomes[loose[0]].status == "settled"
    assert (balance(db, a), balance(db, b), balance(db, c)) == (750, 0, 250)


def test_a_chain_another_transaction_is_settling_is_skipped_not_split(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int], settings
) -> None:
    a, b, c = trio
    legs = ids_of(
        post_batch(client, {"transfers": [item(a, b, 100), item(a, c, 100)], "atomic": True})
    )
    with psycopg.connect(settings.database_url) as other:
        # Another worker holds the second leg (as a settlement in flight would).
        other.execute("SELECT 1 FROM transfers WHERE id = %s FOR NO KEY UPDATE", (legs[1],))

        outcomes = ledger.settle_transfers(db, [legs[0]])

        assert outcomes == {legs[0]: ledger.Outcome("skipped", None, None)}
        other.rollback()
    assert ledger.settle_transfers(db, [legs[0]])[legs[1]].status == "settled"
    assert balance(db, a) == 800


def test_a_chain_whose_leg_is_out_of_attempts_is_dead_lettered_whole(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int]
) -> None:
    a, b, c = trio
    legs = ids_of(
        post_batch(client, {"transfers": [item(a, b, 100), item(a, c, 100)], "atomic": True})
    )
    db.execute("UPDATE transfers SET failed_attempts = 20 WHERE id = %s", (legs[1],))

    outcomes = ledger.settle_transfers(db, [legs[0]])

    assert {o.status for o in outcomes.values()} == {"dead-lettered"}
    assert set(outcomes) == set(legs)
    for leg in legs:
        assert transfer_row(db, leg)["dead_lettered_at"] is not None
        assert events_of(db, leg)[-1][0] == "transfer.dead_lettered"
    assert balance(db, a) == 1_000


@pytest.fixture
def worker() -> Iterator[dramatiq.Worker]:
    broker.flush_all()
    with running_worker(broker, threads=2) as running:
        yield running


def test_an_atomic_batch_sent_to_the_workers_settles_every_leg_in_one_transaction(
    client: TestClient, db: psycopg.Connection, worker: dramatiq.Worker, trio
) -> None:
    a, b, c = trio
    resp = post_batch(
        client,
        {"transfers": [item(a, b, 1 + n % 3) for n in range(300)], "atomic": True},
    )
    legs = ids_of(resp)

    join_queue(broker)

    rows = db.execute(
        "SELECT status, count(*), count(DISTINCT settled_at) FROM transfers"
        " WHERE id = ANY(%s) GROUP BY status",
        (legs,),
    ).fetchall()
    # One transaction: every leg carries the same settled_at (its now()).
    assert rows == [("settled", 300, 1)]
    total = sum(1 + n % 3 for n in range(300))
    assert (balance(db, a), balance(db, b)) == (1_000 - total, total)


def test_an_operator_retries_or_cancels_a_dead_lettered_chain_whole(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int]
) -> None:
    from shared.ledger import dead_letters, operator_actions
    from shared.ledger.auth import SYSTEM

    a, b, c = trio
    body = {"transfers": [item(a, b, 100), item(a, c, 100)], "atomic": True}
    legs = ids_of(post_batch(client, body))
    db.execute("UPDATE transfers SET failed_attempts = 20 WHERE id = %s", (legs[0],))
    ledger.settle_transfers(db, [legs[0]])

    # Sending one leg again releases its chain, which then settles whole.
    assert dead_letters.release(db, [legs[1]]) == legs
    assert {o.status for o in ledger.settle_transfers(db, [legs[1]]).values()} == {"settled"}

    others = ids_of(post_batch(client, {**body, "transfers": [item(a, b, 1), item(a, c, 1)]}))
    db.execute("UPDATE transfers SET failed_attempts = 20 WHERE id = %s", (others[1],))
    ledger.settle_transfers(db, others)
    acting = operator_actions.require_acting(SYSTEM)

    assert operator_actions.cancel(db, others[0], by=acting)

    for leg in others:
        row = transfer_row(db, leg)
        assert (row["status"], row["failure_code"]) == ("failed", "cancelled_by_operator")
    assert balance(db, a) == 800


def test_a_settlement_topping_up_its_batch_leaves_a_chain_to_its_own_message(
    db: psycopg.Connection, client: TestClient, trio: tuple[int, int, int], settings
) -> None:
    """A batch topped up with the oldest pending transfers (`fill`) takes no leg of a chain:
    concurrent fills taking some legs each would leave no settlement all of them."""
    a, b, c = trio
    legs = ids_of(
        post_batch(client, {"transfers": [item(a, b, 100), item(a, c, 100)], "atomic": True})
    )
    # Between accounts of their own, so that the settlement in flight holds none of the chain's.
    treasury, payee = make_account(db, treasury=True), make_account(db)
    loose = ids_of(post_batch(client, {"transfers": [item(treasury, payee, 1)]}))
    with psycopg.connect(settings.database_url) as other:
        # Another worker's settlement, topped up, still in flight.
        topped = ledger.settle_transfers(other, loose, fill=100)

        assert not set(legs) & set(topped)
        outcomes = ledger.settle_transfers(db, [legs[0]])

        assert {outcomes[leg].status for leg in legs} == {"settled"}
        other.commit()
    assert (balance(db, a), balance(db, payee)) == (800, 1)
