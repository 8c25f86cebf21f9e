"""POST/GET /users and /accounts through the real app on the real database."""

from __future__ import annotations

import psycopg
from falcon.testing import TestClient

from tests.helpers import fund, make_account, make_user, row_counts, unique_email

USER_FIELDS = {"id", "email", "name", "created_at"}
ACCOUNT_FIELDS = {"id", "user_id", "currency", "balance", "allow_negative_balance", "created_at"}


def test_creating_a_user_answers_201_with_the_user_and_its_location(client: TestClient) -> None:
    email = unique_email()
    resp = client.simulate_post("/users", json={"email": email, "name": "Ada Lovelace"})
    assert resp.status_code == 201
    user = resp.json["data"]
    assert set(user) == USER_FIELDS
    assert isinstance(user["id"], int)
    assert (user["email"], user["name"]) == (email, "Ada Lovelace")
    assert resp.headers["location"] == f"/users/{user['id']}"


def test_a_created_user_can_be_read_back_at_its_location(client: TestClient) -> None:
    created = client.simulate_post("/users", json={"email": unique_email(), "name": "Grace"})
    resp = client.simulate_get(created.headers["location"])
    assert resp.status_code == 200
    assert resp.json == {"data": created.json["data"]}


def test_a_users_email_is_stored_in_lower_case(client: TestClient) -> None:
    email = unique_email("MiXeD")
    resp = client.simulate_post("/users", json={"email": email.upper(), "name": "Ada"})
    assert resp.status_code == 201
    assert resp.json["data"]["email"] == email.lower()


def test_creating_a_user_with_a_taken_email_answers_409_email_taken(
    client: TestClient, db: psycopg.Connection
) -> None:
    email = unique_email()
    first = client.simulate_post("/users", json={"email": email, "name": "Ada"})
    assert first.status_code == 201
    before = row_counts(db)
    resp = client.simulate_post("/users", json={"email": email.upper(), "name": "Someone Else"})
    assert resp.status_code == 409
    assert resp.json["error"]["code"] == "email_taken"
    assert row_counts(db) == before


def test_creating_a_user_without_a_name_answers_400_invalid_request(
    client: TestClient, db: psycopg.Connection
) -> None:
    before = row_counts(db)
    resp = client.simulate_post("/users", json={"email": unique_email()})
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_request"
    assert "name" in resp.json["error"]["message"]
    assert row_counts(db) == before


def test_reading_an_unknown_user_answers_404_user_not_found(
    client: TestClient, db: psycopg.Connection
) -> None:
    missing = make_user(db) + 1_000_000
    resp = client.simulate_get(f"/users/{missing}")
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "user_not_found"


def test_creating_an_account_answers_201_with_a_zero_balance_and_its_location(
    client: TestClient, db: psycopg.Connection
) -> None:
    user = make_user(db)
    resp = client.simulate_post("/accounts", json={"user_id": user, "currency": "EUR"})
    assert resp.status_code == 201
    account = resp.json["data"]
    assert set(account) == ACCOUNT_FIELDS
    assert account["user_id"] == user
    assert account["currency"] == "EUR"
    assert account["balance"] == 0
    assert account["allow_negative_balance"] is False
    assert resp.headers["location"] == f"/accounts/{account['id']}"


def test_an_account_created_with_allow_negative_balance_is_a_treasury_account(
    client: TestClient, db: psycopg.Connection
) -> None:
    body = {"user_id": make_user(db), "currency": "USD", "allow_negative_balance": True}
    resp = client.simulate_post("/accounts", json=body)
    assert resp.status_code == 201
    assert resp.json["data"]["allow_negative_balance"] is True
    stored = db.execute(
        "SELECT allow_negative_balance FROM accounts WHERE id = %s", (resp.json["data"]["id"],)
    ).fetchone()
    assert stored == (True,)


def test_creating_an_account_for_an_unknown_user_answers_404_user_not_found(
    client: TestClient, db: psycopg.Connection
) -> None:
    missing = make_user(db) + 1_000_000
    before = row_counts(db)
    resp = client.simulate_post("/accounts", json={"user_id": missing, "currency": "EUR"})
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "user_not_found"
    assert row_counts(db) == before


def test_creating_an_account_with_a_lower_case_currency_answers_400_invalid_request(
    client: TestClient, db: psycopg.Connection
) -> None:
    before = row_counts(db)
    resp = client.simulate_post("/accounts", json={"user_id": make_user(db), "currency": "eur"})
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_request"
    assert row_counts(db)["accounts"] == before["accounts"]


def test_reading_an_account_shows_its_balance(client: TestClient, db: psycopg.Connection) -> None:
    treasury = make_account(db, treasury=True)
    account = make_account(db)
    fund(db, treasury, account, 700)
    fund(db, treasury, account, 45)
    resp = client.simulate_get(f"/accounts/{account}")
    assert resp.status_code == 200
    data = resp.json["data"]
    assert set(data) == ACCOUNT_FIELDS
    assert (data["id"], data["currency"], data["balance"]) == (account, "EUR", 745)
    treasury_resp = client.simulate_get(f"/accounts/{treasury}")
    assert treasury_resp.json["data"]["balance"] == -745


def test_reading_an_unknown_account_answers_404_account_not_found(
    client: TestClient, db: psycopg.Connection
) -> None:
    missing = make_account(db) + 1_000_000
    resp = client.simulate_get(f"/accounts/{missing}")
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "account_not_found"
