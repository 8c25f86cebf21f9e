"""POST /transfers and GET /transfers/{id} through the real app on the real database."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import falcon.testing
import psycopg
import pytest
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import operations as ledger
from tests.helpers import balance, fund, make_account, new_key, row_counts, submit

TRANSFER_FIELDS = {
    "id",
    "status",
    "from_account_id",
    "to_account_id",
    "amount",
    "currency",
    "failure_code",
    "attempts",
    "created_at",
    "settled_at",
    "dead_lettered_at",
    "metadata",
}


def post_transfer(
    client: TestClient, body: Mapping[str, object], key: str | None
) -> falcon.testing.Result:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.simulate_post("/transfers", json=body, headers=headers)


@pytest.fixture
def accounts(db: psycopg.Connection) -> tuple[int, int]:
    """A funded EUR account and an empty one."""
    treasury = make_account(db, treasury=True)
    source, target = make_account(db), make_account(db)
    fund(db, treasury, source, 10_000)
    return source, target


def test_submitting_a_transfer_answers_202_with_a_pending_transfer_and_its_location(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 2500}
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 202
    transfer = resp.json["data"]
    assert set(transfer) == TRANSFER_FIELDS
    assert transfer["status"] == "pending"
    assert (transfer["from_account_id"], transfer["to_account_id"]) == (source, target)
    assert (transfer["amount"], transfer["currency"]) == (2500, "EUR")
    assert (transfer["failure_code"], transfer["attempts"], transfer["settled_at"]) == (
        None,
        0,
        None,
    )
    assert resp.headers["location"] == f"/transfers/{transfer['id']}"
    assert sent[-1] == transfer["id"]
    # Accepting is not settling: the web front moves no money.
    assert (balance(db, source), balance(db, target)) == (10_000, 0)


def test_a_submitted_transfer_can_be_read_back_at_its_location(
    client: TestClient, accounts: tuple[int, int]
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 1}
    created = post_transfer(client, body, new_key())
    resp = client.simulate_get(created.headers["location"])
    assert resp.status_code == 200
    assert resp.json == {"data": created.json["data"]}


def test_replaying_an_idempotency_key_returns_the_same_transfer(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 300, "currency": "EUR"}
    key = new_key()
    first = post_transfer(client, body, key)
    after_first = row_counts(db)
    replay = post_transfer(client, dict(reversed(body.items())), key)
    assert (first.status_code, replay.status_code) == (202, 202)
    assert replay.json == first.json
    assert replay.headers["location"] == first.headers["location"]
    assert row_counts(db) == after_first
    assert first.json["data"]["id"] in sent


def test_replaying_the_key_of_a_settled_transfer_returns_it_settled_without_resending_it(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 300}
    key = new_key()
    transfer_id = post_transfer(client, body, key).json["data"]["id"]
    assert ledger.settle_transfer(db, transfer_id) == ("settled", None)
    sends_before = sent.count(transfer_id)
    replay = post_transfer(client, body, key)
    assert replay.json["data"]["id"] == transfer_id
    assert replay.json["data"]["status"] == "settled"
    assert sent.count(transfer_id) == sends_before
    assert balance(db, target) == 300


def test_reusing_an_idempotency_key_with_another_body_answers_422_idempotency_key_reused(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    key = new_key()
    body = {"from_account_id": source, "to_account_id": target, "amount": 300}
    first = post_transfer(client, body, key)
    before, sends = row_counts(db), len(sent)
    resp = post_transfer(client, {**body, "amount": 301}, key)
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "idempotency_key_reused"
    assert (row_counts(db), len(sent)) == (before, sends)
    original = client.simulate_get(first.headers["location"]).json["data"]
    assert original["amount"] == 300


def test_a_transfer_without_an_idempotency_key_answers_400_idempotency_key_missing(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    before, sends = row_counts(db), len(sent)
    body = {"from_account_id": source, "to_account_id": target, "amount": 300}
    resp = post_transfer(client, body, None)
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "idempotency_key_missing"
    assert (row_counts(db), len(sent)) == (before, sends)


@pytest.mark.parametrize("side", ["from_account_id", "to_account_id"])
def test_a_transfer_naming_an_unknown_account_answers_422_account_not_found(
    client: TestClient,
    db: psycopg.Connection,
    accounts: tuple[int, int],
    sent: list[int],
    side: str,
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 300}
    body[side] = max(accounts) + 1_000_000
    before, sends = row_counts(db), len(sent)
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "account_not_found"
    assert side in resp.json["error"]["message"]
    assert (row_counts(db), len(sent)) == (before, sends)


def test_a_transfer_between_accounts_of_different_currencies_answers_422_currency_mismatch(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, _ = accounts
    dollars = make_account(db, currency="USD")
    before, sends = row_counts(db), len(sent)
    body = {"from_account_id": source, "to_account_id": dollars, "amount": 300}
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "currency_mismatch"
    assert (row_counts(db), len(sent)) == (before, sends)


def test_a_transfer_stating_another_currency_than_its_accounts_answers_422_currency_mismatch(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, target = accounts
    before, sends = row_counts(db), len(sent)
    body = {"from_account_id": source, "to_account_id": target, "amount": 1, "currency": "USD"}
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "currency_mismatch"
    assert (row_counts(db), len(sent)) == (before, sends)


def test_a_transfer_stating_its_accounts_currency_is_accepted(
    client: TestClient, accounts: tuple[int, int]
) -> None:
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 1, "currency": "EUR"}
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 202
    assert resp.json["data"]["currency"] == "EUR"


def test_a_transfer_to_the_same_account_answers_422_same_account(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], sent: list[int]
) -> None:
    source, _ = accounts
    before, sends = row_counts(db), len(sent)
    body = {"from_account_id": source, "to_account_id": source, "amount": 300}
    resp = post_transfer(client, body, new_key())
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "same_account"
    assert (row_counts(db), len(sent)) == (before, sends)


def test_a_settled_transfer_reads_back_settled_with_its_settlement_time(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    source, target = accounts
    transfer_id = submit(db, source, target, 400)
    ledger.settle_transfer(db, transfer_id)
    resp = client.simulate_get(f"/transfers/{transfer_id}")
    assert resp.status_code == 200
    transfer = resp.json["data"]
    assert (transfer["status"], transfer["failure_code"], transfer["attempts"]) == (
        "settled",
        None,
        1,
    )
    settled_at = datetime.datetime.fromisoformat(transfer["settled_at"])
    assert settled_at >= datetime.datetime.fromisoformat(transfer["created_at"])


def test_a_transfer_refused_for_lack_of_funds_reads_back_failed_with_its_failure_code(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    _, empty = accounts
    other = make_account(db)
    transfer_id = submit(db, empty, other, 1)
    ledger.settle_transfer(db, transfer_id)
    resp = client.simulate_get(f"/transfers/{transfer_id}")
    assert resp.status_code == 200
    transfer = resp.json["data"]
    assert (transfer["status"], transfer["failure_code"]) == ("failed", "insufficient_funds")
    assert transfer["settled_at"] is None


def test_reading_an_unknown_transfer_answers_404_transfer_not_found(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    missing = submit(db, *accounts, 1) + 1_000_000
    resp = client.simulate_get(f"/transfers/{missing}")
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "transfer_not_found"


def test_a_transfer_the_broker_cannot_queue_answers_503_and_a_retry_with_its_key_queues_it(
    client: TestClient,
    settings: Settings,
    pool: ConnectionPool,
    operator_key: str,
    db: psycopg.Connection,
    accounts: tuple[int, int],
    sent: list[int],
) -> None:
    from shared.broker.redis_broker import SettleRedisBroker
    from shared.broker.sending import sender
    from web.app import create_app

    # A real Redis client aimed at a port where nothing listens: the broker is down.
    down = SettleRedisBroker(url="redis://127.0.0.1:1/0", socket_connect_timeout=1, middleware=[])
    app = create_app(settings, pool=pool, enqueue=sender(down), ping_broker=lambda: True)
    source, target = accounts
    body = {"from_account_id": source, "to_account_id": target, "amount": 700}
    key = new_key()

    refused = TestClient(app, headers={"Authorization": f"Bearer {operator_key}"}).simulate_post(
        "/transfers", json=body, headers={"Idempotency-Key": key}
    )
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "broker_unavailable"
    assert refused.headers["retry-after"] == "1"
    recorded = db.execute(
        "SELECT id, status FROM transfers WHERE from_account_id = %s AND amount = 700", (source,)
    ).fetchall()
    assert [status for _, status in recorded] == ["pending"]  # kept, for the sweeper

    # Retried with the same key once the broker is back: the same transfer, queued now.
    retried = post_transfer(client, body, key)
    assert retried.status_code == 202
    assert retried.json["data"]["id"] == recorded[0][0]
    assert sent[-1] == recorded[0][0]
