"""The failure that made DB_POOLER=pgbouncer: behind PgBouncer in transaction mode, `settle
web` answered some of 20 `POST /accounts` with an error, because psycopg prepares a query
on its sixth execution and the next transaction runs on another server connection. And
without DB_POOLER, such a PgBouncer is noticed at boot: every process refuses to start."""

from __future__ import annotations

import pytest

from tests.e2e.api import Client
from tests.e2e.conftest import PooledService
from tests.e2e.processes import http_status, start, wait_until_ready
from tests.pgbouncer import running_pgbouncer

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


@pytest.mark.e2e
def test_behind_pgbouncer_without_db_pooler_every_process_refuses_to_start_naming_it(
    pooled_service: PooledService,
) -> None:
    """The setup where Settle booted and then answered reads with 500 (`prepared statement
    "_pg3_16" does not exist`): PgBouncer with its defaults (the server it got back last is
    handed out next) and the startup options Settle sends without DB_POOLER dropped. Now
    each process refuses at boot with one line naming DB_POOLER; declared, the same PgBouncer
    serves every read."""
    direct = pooled_service.direct_url
    with running_pgbouncer(
        direct, server_round_robin="0", ignore_startup_parameters="options"
    ) as bouncer:
        undeclared = {**pooled_service.env, "DATABASE_URL": bouncer.url(direct)}
        del undeclared["DB_POOLER"]
        for role in ("web", "worker", "sweeper", "migrate"):
            process = start(role, undeclared, pooled_service.log_dir)
            pooled_service.processes.append(process)
            assert process.wait(timeout=30) == 2, process.logs()
            named = [line for line in process.logs().splitlines() if "DB_POOLER" in line]
            assert len(named) == 1 and named[0].startswith(
                f"settle {role}: DATABASE_URL leads through a transaction pooler"
            ), process.logs()
            assert "DB_POOLER=pgbouncer" in named[0]
        assert http_status(pooled_service.port, "/healthz") is None

        declared = {**undeclared, "DB_POOLER": "pgbouncer"}
        web = start("web", declared, pooled_service.log_dir)
        pooled_service.processes.append(web)
        wait_until_ready(web, pooled_service.port)
        with Client(pooled_service.port, key=pooled_service.api_key) as client:
            status, _, user = client.request(
                "POST", "/users", {"email": "declared@example.com", "name": "Declared"}
            )
            assert status == 201, user
            read = [client.request("GET", f"/users/{user['data']['id']}") for _ in range(ACCOUNTS)]
        assert [status for status, _, _ in read] == [200] * ACCOUNTS, read
        assert web.stop() == 0
