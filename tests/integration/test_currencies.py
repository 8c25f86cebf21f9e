"""Currencies over HTTP and on the dashboard: only ISO 4217 codes open accounts or name a
transfer's currency, and every amount shown reads with its currency's own decimals."""

from __future__ import annotations

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import auth, dead_letters
from tests.dashboard import Browser
from tests.helpers import make_account, make_user, new_key, row_counts, submit


@pytest.mark.parametrize("code", ["ZZZ", "XXX", "XTS"])
def test_opening_an_account_in_a_code_that_is_no_currency_is_400_and_changes_nothing(
    client: TestClient, db: psycopg.Connection, code: str
) -> None:
    user = make_user(db)
    before = row_counts(db)
    resp = client.simulate_post("/accounts", json={"user_id": user, "currency": code})
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_request"
    assert "ISO 4217" in resp.json["error"]["message"]
    assert code in resp.json["error"]["message"]
    assert row_counts(db) == before


@pytest.mark.parametrize("code", ["JPY", "BHD", "CLF"])
def test_an_account_opens_in_any_iso_4217_currency(
    client: TestClient, db: psycopg.Connection, code: str
) -> None:
    resp = client.simulate_post("/accounts", json={"user_id": make_user(db), "currency": code})
    assert resp.status_code == 201
    assert resp.json["data"]["currency"] == code


def test_a_transfer_stating_a_code_that_is_no_currency_is_400_and_changes_nothing(
    client: TestClient, db: psycopg.Connection
) -> None:
    source, target = make_account(db, treasury=True), make_account(db)
    before = row_counts(db)
    resp = client.simulate_post(
        "/transfers",
        json={"from_account_id": source, "to_account_id": target, "amount": 5, "currency": "ZZZ"},
        headers={"Idempotency-Key": new_key()},
    )
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_request"
    assert "currency" in resp.json["error"]["message"]
    assert row_counts(db) == before


def test_an_account_opened_before_codes_were_checked_still_reads_and_pays(
    client: TestClient, db: psycopg.Connection
) -> None:
    """Rows written while any three capital letters passed are left as they are: they read,
    and move money among themselves, as before."""
    owner = make_user(db)
    legacy = [
        db.execute(
            "INSERT INTO accounts (user_id, currency, allow_negative_balance)"
            " VALUES (%s, 'ZZZ', %s) RETURNING id",
            (owner, treasury),
        ).fetchone()[0]  # type: ignore[index]
        for treasury in (True, False)
    ]
    resp = client.simulate_get(f"/accounts/{legacy[1]}")
    assert resp.status_code == 200
    assert resp.json["data"]["currency"] == "ZZZ"
    paid = client.simulate_post(
        "/transfers",
        json={"from_account_id": legacy[0], "to_account_id": legacy[1], "amount": 7},
        headers={"Idempotency-Key": new_key()},
    )
    assert paid.status_code == 202
    assert paid.json["data"]["currency"] == "ZZZ"


@pytest.fixture
def operator_session(client: TestClient, db: psycopg.Connection) -> Browser:
    return Browser(client, auth.create_key(db, user_id=None, label="currencies").key)


@pytest.mark.parametrize(
    ("code", "amount", "shown"),
    [("JPY", 1250, "1,250 JPY"), ("EUR", 1250, "12.50 EUR"), ("BHD", 1250, "1.250 BHD")],
)
def test_the_dashboard_shows_each_amount_with_its_currencys_decimals(
    operator_session: Browser, db: psycopg.Connection, code: str, amount: int, shown: str
) -> None:
    source = make_account(db, currency=code, treasury=True)
    transfer = submit(db, source, make_account(db, currency=code), amount)
    assert dead_letters.mark(db, transfer, f"parked-{transfer}")
    listed = operator_session.get("/dashboard/transfers", params={"error": f"parked-{transfer}"})
    assert listed.status_code == 200
    assert shown in listed.text
    detail = operator_session.get(f"/dashboard/transfers/{transfer}")
    assert detail.status_code == 200
    assert shown in detail.text
    if code == "JPY":
        assert "12.50" not in listed.text and "12.50" not in detail.text
    # Leave the ledger balanced: the parked transfer ends failed, moving nothing.
    db.execute(
        "UPDATE transfers SET status = 'failed', failure_code = 'cancelled_by_operator',"
        " dead_lettered_at = NULL, finished_at = now() WHERE id = %s",
        (transfer,),
    )
