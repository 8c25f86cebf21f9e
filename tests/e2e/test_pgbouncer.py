"""The failure that made DB_POOLER=pgbouncer: behind PgBouncer in transaction mode, `settle
web` answered some of 20 `POST /accounts` with an error, because psycopg prepares a query
on its sixth execution and the next transaction runs on another server connection."""

from __future__ import annotations

import pytest

from tests.e2e.api import Client
from tests.e2e.conftest import PooledService

ACCOUNTS = 40  # many times psycopg's prepare threshold (5) per pooled connection


@pytest.mark.e2e
def test_many_accounts_created_one_after_another_through_pgbouncer_all_answer_201(
    pooled_service: PooledService,
) -> None:
    pooled_service.pgbouncer.open_servers(pooled_service.direct_url)
    pooled_service.start_web()
    with Client(pooled_service.port, key=pooled_service.api_key) as client:
        status, _, user = client.request(
            "POST", "/users", {"email": "pooled@example.com", "name": "Pooled"}
        )
        assert status == 201, user
        answers = [
            client.request("POST", "/accounts", {"user_id": user["data"]["id"], "currency": "EUR"})
            for _ in range(ACCOUNTS)
        ]
        read = [client.request("GET", f"/users/{user['data']['id']}") for _ in range(ACCOUNTS)]
    assert [status for status, _, _ in answers] == [201] * ACCOUNTS, [
        body for status, _, body in answers if status != 201
    ]
    assert [status for status, _, _ in read] == [200] * ACCOUNTS
    assert len({body["data"]["id"] for _, _, body in answers}) == ACCOUNTS
