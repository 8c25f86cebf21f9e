"""The read ladder's middle rungs (`web/ladder.py`): served only with BENCH_ROUTES=true,
behind the API key like any other route."""

from __future__ import annotations

from dataclasses import replace

import falcon.testing
from psycopg_pool import ConnectionPool

from shared.config import Settings
from web.app import create_app


def no_enqueue(transfer_id: int) -> None:
    raise AssertionError("a ladder rung must not enqueue anything")


def ladder_client(
    settings: Settings, pool: ConnectionPool, *, on: bool
) -> falcon.testing.TestClient:
    app = create_app(
        replace(settings, bench_routes=on), pool=pool, enqueue=no_enqueue, ping_broker=lambda: True
    )
    return falcon.testing.TestClient(app)


def test_the_bench_routes_do_not_exist_unless_bench_routes_is_set(
    settings: Settings, pool: ConnectionPool, operator_key: str
) -> None:
    assert Settings.from_env({}).bench_routes is False
    client = ladder_client(settings, pool, on=False)
    for path in ("/bench/key", "/bench/select-1"):
        answer = client.simulate_get(path, headers={"Authorization": f"Bearer {operator_key}"})
        assert answer.status_code == 404, path


def test_the_rungs_answer_an_api_key_and_refuse_a_request_without_one(
    settings: Settings, pool: ConnectionPool, operator_key: str
) -> None:
    assert Settings.from_env({"BENCH_ROUTES": "true"}).bench_routes is True
    client = ladder_client(settings, pool, on=True)
    headers = {"Authorization": f"Bearer {operator_key}"}
    assert client.simulate_get("/bench/key", headers=headers).json == {"data": {"status": "ok"}}
    assert client.simulate_get("/bench/select-1", headers=headers).json == {"data": {"one": 1}}
    for path in ("/bench/key", "/bench/select-1"):
        refused = client.simulate_get(path)
        assert refused.status_code == 401, path
        assert refused.json["error"]["code"] == "api_key_missing"
