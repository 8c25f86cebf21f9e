"""POST /transfers/batch through the real app on the real database and broker: one result per
item in request order, replays of the whole batch, and the bodies refused whole."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import dramatiq
import falcon.testing
import psycopg
import pytest
from falcon.testing import TestClient

from shared.config import Settings
from shared.ledger.commands import MAX_BATCH_ITEMS
from tests.helpers import (
    balance,
    fund,
    join_queue,
    make_account,
    new_key,
    row_counts,
    running_worker,
    transfer_row,
)
from worker.actors import settle_transfer

broker = settle_transfer.broker


def post_batch(client: TestClient, body: object, **kwargs: object) -> falcon.testing.Result:
    return client.simulate_post("/transfers/batch", json=body, **kwargs)


def item(
    source: int, target: int, amount: int, key: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "from_account_id": source,
        "to_account_id": target,
        "amount": amount,
        "idempotency_key": new_key() if key is None else key,
        **extra,
    }


def statuses(resp: falcon.testing.Result) -> list[int]:
    return [result["status"] for result in resp.json["data"]]


def codes(resp: falcon.testing.Result) -> list[str | None]:
    return [result.get("error", {}).get("code") for result in resp.json["data"]]


def transfer_count(conn: psycopg.Connection, keys: Sequence[str]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM transfers WHERE idempotency_key = ANY(%s)", (list(keys),)
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def accounts(db: psycopg.Connection) -> tuple[int, int, int]:
    """A funded EUR account, an empty EUR account and an empty USD account."""
    treasury = make_account(db, treasury=True)
    source, target = make_account(db), make_account(db)
    fund(db, treasury, source, 10_000)
    return source, target, make_account(db, currency="USD")


def test_each_item_is_answered_in_request_order_with_its_transfer_or_its_own_error(
    client: TestClient,
    db: psycopg.Connection,
    accounts: tuple[int, int, int],
    sent: list[int],
) -> None:
    source, target, dollars = accounts
    items: list[object] = [
        item(source, target, 100, metadata={"order": "a-1"}),
        item(source, source, 100),  # same account
        item(source, 2**62, 100),  # no such account
        {"from_account_id": source, "to_account_id": target, "amount": 100},  # no key
        item(source, target, 1.5),  # not minor units
        item(source, dollars, 100),  # currency mismatch
        "not a transfer",
        item(source, target, 200, currency="EUR"),
        item(source, target, 300, unknown="field"),
    ]
    resp = post_batch(client, {"transfers": items})

    assert resp.status_code == 200
    assert statuses(resp) == [202, 422, 422, 400, 400, 422, 400, 202, 400]
    assert codes(resp) == [
        None,
        "same_account",
        "account_not_found",
        "idempotency_key_missing",
        "invalid_request",
        "currency_mismatch",
        "invalid_request",
        None,
        "invalid_request",
    ]
    first, last = resp.json["data"][0]["data"], resp.json["data"][7]["data"]
    assert (first["amount"], first["status"], first["metadata"]) == (
        100,
        "pending",
        {"order": "a-1"},
    )
    assert (last["amount"], last["currency"]) == (200, "EUR")
    assert first["id"] < last["id"]
    assert {first["id"], last["id"]} <= set(sent)
    # Only the two accepted items were recorded.
    keys = [i["idempotency_key"] for i in items if isinstance(i, dict) and "idempotency_key" in i]
    assert transfer_count(db, keys) == 2
    for result in resp.json["data"]:
        if "error" in result:
            assert result["error"]["message"]


def test_retrying_a_whole_batch_answers_the_same_results_and_records_nothing_twice(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int, int]
) -> None:
    source, target, dollars = accounts
    body = {
        "transfers": [
            item(source, target, 100),
            item(source, dollars, 100),
            item(source, target, 250),
        ]
    }
    first = post_batch(client, body)
    counts = row_counts(db)

    again = post_batch(client, body)

    assert again.status_code == first.status_code == 200
    assert again.json == first.json
    assert statuses(again) == [202, 422, 202]
    assert row_counts(db) == counts


def test_an_item_key_is_scoped_like_the_idempotency_key_header(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int, int]
) -> None:
    """A key used by POST /transfers answers its transfer when a batch item asks for the same
    transfer, and refuses that item (only) when it asks for another."""
    source, target, _ = accounts
    key, other = new_key(), new_key()
    single = client.simulate_post(
        "/transfers",
        json={"from_account_id": source, "to_account_id": target, "amount": 700},
        headers={"Idempotency-Key": key},
    )
    client.simulate_post(
        "/transfers",
        json={"from_account_id": source, "to_account_id": target, "amount": 800},
        headers={"Idempotency-Key": other},
    )

    resp = post_batch(
        client,
        {
            "transfers": [
                item(source, target, 700, key),
                item(source, target, 801, other),
                item(source, target, 900),
            ]
        },
    )

    assert statuses(resp) == [202, 422, 202]
    assert resp.json["data"][0]["data"] == single.json["data"]
    assert codes(resp)[1] == "idempotency_key_reused"
    assert transfer_row(db, single.json["data"]["id"])["amount"] == 700
    assert transfer_count(db, [key, other]) == 2


def test_a_key_given_twice_in_one_batch_is_a_replay_of_its_first_item_or_refused(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int, int]
) -> None:
    source, target, _ = accounts
    key = new_key()
    resp = post_batch(
        client,
        {
            "transfers": [
                item(source, target, 100, key),
                item(source, target, 100, key),
                item(source, target, 999, key),
            ]
        },
    )

    assert statuses(resp) == [202, 202, 422]
    assert resp.json["data"][0] == resp.json["data"][1]
    assert codes(resp)[2] == "idempotency_key_reused"
    assert transfer_count(db, [key]) == 1


def test_a_users_key_spends_only_from_its_own_accounts_in_a_batch(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int, int]
) -> None:
    from shared.ledger import auth

    source, target, _ = accounts
    user_id = db.execute("SELECT user_id FROM accounts WHERE id = %s", (target,)).fetchone()
    assert user_id is not None
    own = make_account(db, user_id=int(user_id[0]))
    key = auth.create_key(db, user_id=int(user_id[0]), label="batch test").key

    resp = post_batch(
        client,
        {"transfers": [item(source, target, 100), item(own, target, 100)]},
        headers={"Authorization": f"Bearer {key}"},
    )

    # The foreign source looks like no account; the user's own (empty) account is accepted.
    assert statuses(resp) == [422, 202]
    assert codes(resp)[0] == "account_not_found"


def test_a_read_only_key_is_refused_the_whole_batch(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int, int]
) -> None:
    from shared.ledger import auth

    source, target, _ = accounts
    key = auth.create_key(db, user_id=None, label="read-only", read_only=True).key
    counts = row_counts(db)

    resp = post_batch(
        client,
        {"transfers": [item(source, target, 100)]},
        headers={"Authorization": f"Bearer {key}"},
    )

    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "read_only_key"
    assert row_counts(db) == counts


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "invalid_batch"),
        ({}, "invalid_batch"),
        ({"transfers": []}, "invalid_batch"),
        ({"transfers": {"a": 1}}, "invalid_batch"),
        ({"transfers": [{}], "extra": 1}, "invalid_batch"),
        ({"transfers": [{}], "atomic": "yes"}, "invalid_batch"),
        ({"transfers": [{}] * (MAX_BATCH_ITEMS + 1)}, "batch_too_large"),
    ],
    ids=["array", "no-transfers", "empty", "not-a-list", "unknown-member", "atomic", "1001"],
)
def test_a_body_that_is_not_a_batch_is_refused_whole_with_400(
    client: TestClient, db: psycopg.Connection, body: object, code: str
) -> None:
    counts = row_counts(db)
    resp = post_batch(client, body)
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == code
    assert row_counts(db) == counts


def test_a_body_that_is_not_json_is_refused_whole(
    client: TestClient, db: psycopg.Connection
) -> None:
    counts = row_counts(db)
    resp = client.simulate_post(
        "/transfers/batch", body=b'{"transfers": [', headers={"Content-Type": "application/json"}
    )
    assert (resp.status_code, resp.json["error"]["code"]) == (400, "invalid_json")
    wrong_type = client.simulate_post(
        "/transfers/batch", body=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert (wrong_type.status_code, wrong_type.json["error"]["code"]) == (
        415,
        "unsupported_media_type",
    )
    assert row_counts(db) == counts


def test_a_batch_over_the_size_limit_is_refused_whole_with_413(
    client: TestClient, db: psycopg.Connection, settings: Settings, accounts: tuple[int, int, int]
) -> None:
    source, target, _ = accounts
    metadata = {f"k{n}": "x" * 400 for n in range(3)}
    body = {"transfers": [item(source, target, 1, metadata=metadata) for _ in range(1000)]}
    assert len(json.dumps(body)) > settings.max_batch_body_bytes
    counts = row_counts(db)

    resp = post_batch(client, body)

    assert resp.status_code == 413
    assert resp.json["error"]["code"] == "body_too_large"
    assert row_counts(db) == counts


@pytest.fixture
def worker() -> Iterator[dramatiq.Worker]:
    broker.flush_all()
    with running_worker(broker, threads=2) as running:
        yield running


def test_a_batch_of_a_thousand_is_recorded_queued_and_settled(
    client: TestClient,
    db: psycopg.Connection,
    worker: dramatiq.Worker,
    accounts: tuple[int, int, int],
) -> None:
    source, target, _ = accounts
    items = [item(source, target, 1 + n % 7) for n in range(MAX_BATCH_ITEMS)]
    total = sum(int(i["amount"]) for i in items)  # type: ignore[call-overload]

    resp = post_batch(client, {"transfers": items})

    assert statuses(resp) == [202] * MAX_BATCH_ITEMS
    amounts = [result["data"]["amount"] for result in resp.json["data"]]
    assert amounts == [i["amount"] for i in items]
    join_queue(broker)
    ids = [result["data"]["id"] for result in resp.json["data"]]
    states = db.execute(
        "SELECT status, count(*) FROM transfers WHERE id = ANY(%s) GROUP BY status", (ids,)
    ).fetchall()
    assert states == [("settled", MAX_BATCH_ITEMS)]
    assert (balance(db, source), balance(db, target)) == (10_000 - total, total)
