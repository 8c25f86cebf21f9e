"""Read-only operator keys: they see everything an operator key sees and change nothing."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from falcon.testing import TestClient

from shared.errors import ReadOnlyKey
from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.commands import NewUser
from tests.helpers import make_account, make_user, row_counts, submit, unique_email
from tests.integration.test_keys_cli import bearer, settle


@pytest.fixture(scope="module")
def read_only_key(settings) -> str:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return auth.create_key(conn, user_id=None, read_only=True, label="read-only").key


def test_a_read_only_operator_key_reads_what_any_operator_key_reads(
    client: TestClient, db: psycopg.Connection, read_only_key: str
) -> None:
    source, target = make_account(db, treasury=True), make_account(db)
    transfer = submit(db, source, target, 100)
    user = int(db.execute("SELECT user_id FROM accounts WHERE id = %s", (target,)).fetchone()[0])
    headers = bearer(read_only_key)
    assert client.simulate_get(f"/users/{user}", headers=headers).status_code == 200
    assert client.simulate_get(f"/accounts/{target}", headers=headers).status_code == 200
    assert client.simulate_get(f"/accounts/{target}/entries", headers=headers).status_code == 200
    assert client.simulate_get(f"/transfers/{transfer}", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users", {"email": "ro@example.com", "name": "Never"}),
        ("/accounts", {"user_id": 1, "currency": "EUR"}),
        ("/transfers", {"from_account_id": 1, "to_account_id": 2, "amount": 1}),
    ],
)
def test_a_read_only_operator_key_is_refused_every_change_and_nothing_is_written(
    client: TestClient, db: psycopg.Connection, read_only_key: str, path: str, body: dict
) -> None:
    before = row_counts(db)
    headers = {**bearer(read_only_key), "Idempotency-Key": uuid.uuid4().hex}
    resp = client.simulate_post(path, json=body, headers=headers)
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "read_only_key"
    assert row_counts(db) == before


def test_a_read_only_key_is_refused_before_its_body_is_read(
    client: TestClient, read_only_key: str
) -> None:
    resp = client.simulate_post(
        "/transfers", body=b"not json", headers={**bearer(read_only_key), "Content-Type": "x/y"}
    )
    assert (resp.status_code, resp.json["error"]["code"]) == (403, "read_only_key")


def test_the_use_cases_refuse_a_read_only_principal_too(db: psycopg.Connection) -> None:
    viewer = auth.Principal(user_id=None, key_id=None, read_only=True)
    with pytest.raises(ReadOnlyKey):
        ledger.create_user(db, NewUser(email=unique_email(), name="x"), by=viewer)


def test_only_operator_keys_can_be_read_only(db: psycopg.Connection) -> None:
    with pytest.raises(ValueError):
        auth.create_key(db, user_id=make_user(db), read_only=True)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO api_keys (user_id, read_only, key_hash, key_prefix)"
            " VALUES (%s, true, %s, 'x')",
            (make_user(db), b"\x01" * 32),
        )


def test_keys_create_operator_read_only_makes_a_key_that_reads_but_may_not_write(
    client: TestClient,
) -> None:
    done = settle("keys", "create", "--operator", "--read-only", "--label", "viewer")
    assert done.returncode == 0, done.stderr
    assert "operator (read-only)" in done.stderr
    key = done.stdout.strip()
    assert client.simulate_get("/users/1", headers=bearer(key)).status_code in (200, 404)
    resp = client.simulate_post(
        "/users", json={"email": unique_email(), "name": "No"}, headers=bearer(key)
    )
    assert resp.json["error"]["code"] == "read_only_key"
    listed = settle("keys", "list").stdout
    assert any("operator (read-only)" in line and "viewer" in line for line in listed.splitlines())


def test_keys_create_read_only_without_operator_is_bad_usage(db: psycopg.Connection) -> None:
    done = settle("keys", "create", "--user", str(make_user(db)), "--read-only")
    assert done.returncode == 2
    assert "--read-only needs --operator" in done.stderr
