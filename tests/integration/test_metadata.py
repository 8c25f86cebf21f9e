"""Metadata on POST /transfers: a flat object of strings within its limits, stored and shown
wherever the transfer is, part of what an Idempotency-Key stands for, refused whole (400
naming the limit, nothing written) when it breaks a limit."""

from __future__ import annotations

import hashlib
import json

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger.commands import NewTransfer
from tests.dashboard import Browser
from tests.helpers import fund, make_account, new_key, row_counts, transfer_row


@pytest.fixture
def accounts(db: psycopg.Connection) -> tuple[int, int]:
    treasury = make_account(db, treasury=True)
    source, target = make_account(db), make_account(db)
    fund(db, treasury, source, 10_000)
    return source, target


def post(
    client: TestClient, accounts: tuple[int, int], key: str, **extra: object
) -> tuple[int, dict]:
    body = {"from_account_id": accounts[0], "to_account_id": accounts[1], "amount": 100, **extra}
    resp = client.simulate_post("/transfers", json=body, headers={"Idempotency-Key": key})
    return resp.status_code, resp.json


def test_metadata_is_stored_and_shown_wherever_the_transfer_is(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], operator_key: str
) -> None:
    metadata = {"order_id": "A-1042", "note": "für Ada", "empty": ""}
    status, answer = post(client, accounts, new_key(), metadata=metadata)
    assert status == 202
    transfer = answer["data"]
    assert transfer["metadata"] == metadata
    assert transfer_row(db, transfer["id"])["metadata"] == metadata
    assert client.simulate_get(f"/transfers/{transfer['id']}").json["data"]["metadata"] == metadata
    listed = client.simulate_get("/transfers", params={"account_id": str(accounts[0])})
    assert listed.json["data"][0] == transfer
    detail = client.simulate_get(f"/dashboard/api/transfers/{transfer['id']}")
    assert detail.json["data"]["metadata"] == metadata
    page = Browser(client, operator_key).get(f"/dashboard/transfers/{transfer['id']}")
    assert "metadata order_id" in page.text and "A-1042" in page.text
    assert "für Ada" in page.text


def test_a_transfer_without_metadata_shows_an_empty_object(
    client: TestClient, accounts: tuple[int, int]
) -> None:
    status, answer = post(client, accounts, new_key())
    assert status == 202
    assert answer["data"]["metadata"] == {}


def test_replaying_a_key_with_the_same_metadata_in_any_order_returns_the_same_transfer(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    key = new_key()
    _, first = post(client, accounts, key, metadata={"a": "1", "b": "2"})
    before = row_counts(db)
    status, again = post(client, accounts, key, metadata={"b": "2", "a": "1"})
    assert status == 202
    assert again["data"]["id"] == first["data"]["id"]
    assert row_counts(db) == before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"order_id": "A-1"}, {"order_id": "A-2"}),  # another value
        ({"order_id": "A-1"}, {"order": "A-1"}),  # another key
        ({"order_id": "A-1"}, {}),  # dropped
        (None, {"order_id": "A-1"}),  # added
    ],
    ids=["other value", "other key", "dropped", "added"],
)
def test_replaying_a_key_with_other_metadata_is_422_idempotency_key_reused(
    client: TestClient,
    db: psycopg.Connection,
    accounts: tuple[int, int],
    first: dict | None,
    second: dict,
) -> None:
    key = new_key()
    status, original = post(client, accounts, key, **({} if first is None else {"metadata": first}))
    assert status == 202
    before = row_counts(db)
    status, answer = post(client, accounts, key, metadata=second)
    assert status == 422
    assert answer["error"]["code"] == "idempotency_key_reused"
    assert row_counts(db) == before
    assert transfer_row(db, original["data"]["id"])["metadata"] == (first or {})


def test_no_metadata_and_empty_metadata_are_the_same_request(
    client: TestClient, accounts: tuple[int, int]
) -> None:
    key = new_key()
    _, first = post(client, accounts, key)
    status, again = post(client, accounts, key, metadata={})
    assert status == 202
    assert again["data"]["id"] == first["data"]["id"]


def test_a_key_used_before_transfers_had_metadata_still_replays() -> None:
    """Keys recorded before the upgrade were hashed without metadata: a request with none
    hashes exactly as it did then, so its replay finds the transfer rather than a 422."""
    new = NewTransfer(7, 8, 250, "EUR", "k")
    before_metadata = hashlib.sha256(json.dumps([7, 8, 250, "EUR"]).encode()).hexdigest()
    assert new.fingerprint() == before_metadata
    assert NewTransfer(7, 8, 250, "EUR", "k", {"a": "1"}).fingerprint() != before_metadata


def _keys(count: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(count)}


@pytest.mark.parametrize(
    "metadata",
    [
        _keys(20),
        {"k" * 40: "v"},
        {"k": "v" * 500},
        {"ключ": "é" * 500},  # limits count characters, not bytes
        {"a b": "", "x.y-z_1": "=&?"},
    ],
    ids=["20 keys", "key of 40", "value of 500", "500 non-ASCII characters", "any characters"],
)
def test_metadata_at_its_limits_is_accepted(
    client: TestClient, db: psycopg.Connection, accounts: tuple[int, int], metadata: dict
) -> None:
    status, answer = post(client, accounts, new_key(), metadata=metadata)
    assert status == 202, answer
    assert transfer_row(db, answer["data"]["id"])["metadata"] == metadata


BAD_METADATA = {
    "21 keys": (_keys(21), "at most 20 keys"),
    "a key of 41 characters": ({"k" * 41: "v"}, "1 to 40 characters"),
    "an empty key": ({"": "v"}, "1 to 40 characters"),
    "a value of 501 characters": ({"k": "v" * 501}, "at most 500 characters"),
    "a number as a value": ({"k": 5}, "must be a string"),
    "a null value": ({"k": None}, "must be a string"),
    "a nested object": ({"k": {"deeper": "v"}}, "flat object of strings"),
    "a list as a value": ({"k": ["v"]}, "must be a string"),
    "a list for metadata": (["k", "v"], "JSON object"),
    "a string for metadata": ("k=v", "JSON object"),
    "null for metadata": (None, "JSON object"),
    "square brackets in a key": ({"a[b]": "v"}, "square brackets"),
    "a NUL in a key": ({"a\x00": "v"}, "NUL"),
    "a NUL in a value": ({"k": "v\x00"}, "NUL"),
}


@pytest.mark.parametrize(("metadata", "named"), BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_metadata_over_a_limit_is_400_naming_it_and_nothing_is_written(
    client: TestClient,
    db: psycopg.Connection,
    accounts: tuple[int, int],
    sent: list[int],
    metadata: object,
    named: str,
) -> None:
    before, queued = row_counts(db), len(sent)
    status, answer = post(client, accounts, new_key(), metadata=metadata)
    assert status == 400
    assert answer["error"]["code"] == "invalid_request"
    assert "metadata" in answer["error"]["message"]
    assert named in answer["error"]["message"]
    assert row_counts(db) == before
    assert len(sent) == queued
