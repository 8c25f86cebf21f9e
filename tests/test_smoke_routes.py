from __future__ import annotations

import psycopg

from tests.helpers import balance, fund, make_account


def test_a_funded_account_reports_its_balance(client, db: psycopg.Connection) -> None:
    treasury = make_account(db, treasury=True)
    account = make_account(db)
    fund(db, treasury, account, 1234)
    resp = client.simulate_get(f"/accounts/{account}")
    assert resp.status_code == 200
    assert resp.json["data"]["balance"] == 1234 == balance(db, account)
