"""GET /accounts/{id}/entries: the ledger of one account, oldest first, a cursor at a time."""

from __future__ import annotations

import base64

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import operations as ledger
from tests.helpers import entry_ids, fund, make_account, submit

ENTRY_FIELDS = {"id", "transfer_id", "account_id", "amount", "created_at"}


def pages(client: TestClient, account: int, limit: int) -> list[dict[str, object]]:
    """Every page of the account's entries, following next_cursor to the end."""
    found: list[dict[str, object]] = []
    query = f"limit={limit}"
    while True:
        resp = client.simulate_get(f"/accounts/{account}/entries", query_string=query)
        assert resp.status_code == 200
        found.append(resp.json)
        cursor = resp.json["next_cursor"]
        if cursor is None:
            return found
        assert len(found) <= 100, "next_cursor never became null"
        query = f"limit={limit}&cursor={cursor}"


@pytest.fixture
def account_with_five_entries(db: psycopg.Connection) -> int:
    treasury = make_account(db, treasury=True)
    account = make_account(db)
    for amount in (100, 200, 300, 400, 500):
        fund(db, treasury, account, amount)
    return account


def test_an_account_without_entries_answers_an_empty_last_page(
    client: TestClient, db: psycopg.Connection
) -> None:
    resp = client.simulate_get(f"/accounts/{make_account(db)}/entries")
    assert resp.status_code == 200
    assert resp.json == {"data": [], "next_cursor": None}


def test_entries_are_listed_oldest_first_with_debits_negative(
    client: TestClient, db: psycopg.Connection
) -> None:
    treasury = make_account(db, treasury=True)
    account, other = make_account(db), make_account(db)
    funding = [fund(db, treasury, account, amount) for amount in (100, 250)]
    spending = submit(db, account, other, 30)
    assert ledger.settle_transfer(db, spending) == ("settled", None)
    resp = client.simulate_get(f"/accounts/{account}/entries")
    assert resp.status_code == 200
    entries = resp.json["data"]
    assert all(set(entry) == ENTRY_FIELDS for entry in entries)
    assert [e["id"] for e in entries] == entry_ids(db, account)
    assert [(e["transfer_id"], e["amount"]) for e in entries] == [
        (funding[0], 100),
        (funding[1], 250),
        (spending, -30),
    ]
    assert {e["account_id"] for e in entries} == {account}
    assert resp.json["next_cursor"] is None


def test_following_next_cursor_lists_every_entry_once_in_order(
    client: TestClient, db: psycopg.Connection, account_with_five_entries: int
) -> None:
    account = account_with_five_entries
    walked = pages(client, account, limit=2)
    assert [len(page["data"]) for page in walked] == [2, 2, 1]
    assert [page["next_cursor"] is None for page in walked] == [False, False, True]
    listed = [entry["id"] for page in walked for entry in page["data"]]
    assert listed == entry_ids(db, account)
    amounts = [entry["amount"] for page in walked for entry in page["data"]]
    assert amounts == [100, 200, 300, 400, 500]


def test_a_page_that_ends_exactly_at_the_last_entry_has_no_next_cursor(
    client: TestClient, account_with_five_entries: int
) -> None:
    walked = pages(client, account_with_five_entries, limit=5)
    assert len(walked) == 1
    assert len(walked[0]["data"]) == 5
    assert walked[0]["next_cursor"] is None


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_a_limit_from_1_to_1000_is_honoured(
    client: TestClient, account_with_five_entries: int, limit: str
) -> None:
    resp = client.simulate_get(
        f"/accounts/{account_with_five_entries}/entries", params={"limit": limit}
    )
    assert resp.status_code == 200
    assert len(resp.json["data"]) == min(int(limit), 5)
    assert (resp.json["next_cursor"] is None) == (int(limit) >= 5)


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "2.5"])
def test_a_limit_outside_1_to_1000_answers_400_invalid_request(
    client: TestClient, account_with_five_entries: int, limit: str
) -> None:
    resp = client.simulate_get(
        f"/accounts/{account_with_five_entries}/entries", params={"limit": limit}
    )
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_request"
    assert "limit" in resp.json["error"]["message"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        "é",
        _b64("e"),
        _b64("e0"),
        _b64("e-5"),
        _b64("x5"),
        _b64("e1.5"),
        _b64("e" + "9" * 25),
        base64.urlsafe_b64encode(b"e\xff").decode(),
    ],
    ids=repr,
)
def test_a_cursor_not_issued_by_the_service_answers_400_invalid_cursor(
    client: TestClient, account_with_five_entries: int, cursor: str
) -> None:
    resp = client.simulate_get(
        f"/accounts/{account_with_five_entries}/entries", params={"cursor": cursor}
    )
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_cursor"


def test_entries_of_an_unknown_account_answer_404_account_not_found(
    client: TestClient, db: psycopg.Connection
) -> None:
    missing = make_account(db) + 1_000_000
    resp = client.simulate_get(f"/accounts/{missing}/entries")
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "account_not_found"
