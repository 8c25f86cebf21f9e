from __future__ import annotations

import pytest

from shared.config import Settings
from shared.db.budget import (
    BudgetExceeded,
    Capacity,
    capacity,
    capacity_from_server,
    make_plan,
)
from shared.db.pool import connect_kwargs


def plan_for(available: int, **env: str):
    settings = Settings.from_env({"DB_CONNECTION_BUDGET": str(available), **env})
    return make_plan(settings, Capacity(available, "DB_CONNECTION_BUDGET"))


def test_everyone_gets_one_connection_per_thread_when_that_fits() -> None:
    plan = plan_for(
        35, WEB_PROCESSES="2", WEB_THREADS="4", WORKER_PROCESSES="2", WORKER_THREADS="8"
    )
    assert (plan.web.pool_size, plan.worker.pool_size, plan.sweeper.pool_size) == (4, 8, 2)
    assert plan.events.pool_size == 1  # each web process's event watch
    assert plan.webhooks.pool_size == 2  # WEBHOOK_POOL_SIZE, for WEBHOOK_THREADS 4
    assert plan.total == 2 * 4 + 2 * 1 + 2 * 8 + 2 + 2 == 30
    assert plan.headroom == 5


def test_instances_multiply_every_role_that_runs_on_them() -> None:
    plan = plan_for(
        100,
        WEB_INSTANCES="3",
        WEB_PROCESSES="2",
        WEB_THREADS="4",
        WORKER_INSTANCES="2",
        WORKER_PROCESSES="3",
        WORKER_THREADS="5",
    )
    assert plan.web.total == 3 * 2 * 4
    assert plan.events.total == 3 * 2 * 1
    assert plan.worker.total == 2 * 3 * 5
    assert plan.webhooks.total == 2 * 1 * 2  # one webhook process per worker instance
    assert plan.total == 24 + 6 + 30 + 4 + 2


def test_web_gets_the_rest_split_evenly_when_workers_take_most() -> None:
    # workers 2 x 8 = 16, sweeper 2, 2 event watches, a webhook process 2, leaves 5 for 2
    # web processes: 2 each
    plan = plan_for(
        27, WEB_PROCESSES="2", WEB_THREADS="4", WORKER_PROCESSES="2", WORKER_THREADS="8"
    )
    assert plan.worker.pool_size == 8
    assert plan.web.pool_size == 2
    assert plan.total <= 27


def test_web_pool_size_setting_caps_web_below_its_threads() -> None:
    plan = plan_for(100, WEB_THREADS="8", WEB_POOL_SIZE="3")
    assert plan.web.pool_size == 3


def test_a_plan_that_cannot_give_web_one_connection_refuses_with_the_arithmetic() -> None:
    with pytest.raises(BudgetExceeded) as refused:
        plan_for(35, WEB_PROCESSES="2", WEB_THREADS="4", WORKER_PROCESSES="4", WORKER_THREADS="8")
    assert refused.value.message == (
        "budget: 4 worker processes x 8 threads + 2 web x 1 + 2 event watches + 1 webhook x 2"
        " + 2 sweeper = 40 > 35 available (DB_CONNECTION_BUDGET)"
    )


def test_web_share_splits_a_budget_too_small_for_one_connection_per_thread() -> None:
    # room after the sweeper, 2 event watches and a webhook process: 19; web share 0.25 -> 4
    # for 2 web processes -> 2 each; workers get the remaining 15 over 2 processes -> 7 each
    # (fewer than their 8 threads)
    plan = plan_for(
        25,
        WEB_PROCESSES="2",
        WEB_THREADS="4",
        WORKER_PROCESSES="2",
        WORKER_THREADS="8",
        WEB_SHARE="0.25",
    )
    assert plan.web.pool_size == 2
    assert plan.worker.pool_size == 7
    assert plan.total == 2 * 2 + 2 * 1 + 2 * 7 + 2 + 2 <= 25


def test_web_share_still_refuses_when_workers_would_get_nothing() -> None:
    with pytest.raises(BudgetExceeded) as refused:
        plan_for(
            4,
            WEB_PROCESSES="3",
            WEB_THREADS="4",
            WORKER_PROCESSES="2",
            WORKER_THREADS="8",
            WEB_SHARE="0.5",
        )
    assert refused.value.message.startswith("budget: 2 worker processes x 1 threads + 3 web x 1")
    assert "> 4 available" in refused.value.message


def test_the_table_lists_each_role_and_the_headroom() -> None:
    table = plan_for(40, WEB_PROCESSES="2", WEB_THREADS="4").table().splitlines()
    assert table[0].split() == ["role", "instances", "processes", "threads", "pool", "total"]
    assert table[1].split() == ["web", "1", "2", "4", "4", "8"]
    assert table[2].split() == ["events", "1", "2", "1", "1", "2"]
    assert table[3].split() == ["worker", "1", "2", "4", "4", "8"]
    assert table[4].split() == ["webhooks", "1", "1", "4", "2", "2"]
    assert table[5].split() == ["sweeper", "1", "1", "2", "2", "2"]
    assert table[6] == "total 22 of 40 available (DB_CONNECTION_BUDGET); headroom 18"


def test_each_web_process_counts_one_connection_for_its_event_watch_unless_waiting_is_off() -> None:
    on = plan_for(60, WEB_INSTANCES="2", WEB_PROCESSES="3", WEB_THREADS="4")
    assert (on.events.instances, on.events.processes, on.events.pool_size) == (2, 3, 1)
    assert on.events.total == 6
    off = plan_for(60, WEB_INSTANCES="2", WEB_PROCESSES="3", WEB_THREADS="4", EVENT_WAITERS="0")
    assert off.events.total == 0
    assert on.total - off.total == 6


def test_waiters_default_to_half_the_web_threads_and_must_stay_below_them() -> None:
    from shared.errors import InvalidSetting

    assert Settings.from_env({"WEB_THREADS": "8"}).waiters == 4
    assert Settings.from_env({"WEB_THREADS": "1"}).waiters == 0
    assert Settings.from_env({"WEB_THREADS": "8", "EVENT_WAITERS": "7"}).waiters == 7
    with pytest.raises(InvalidSetting, match="EVENT_WAITERS=8 must be below WEB_THREADS=8"):
        Settings.from_env({"WEB_THREADS": "8", "EVENT_WAITERS": "8"})


def test_a_share_outside_zero_and_one_is_a_bad_setting() -> None:
    from shared.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="WEB_SHARE"):
        Settings.from_env({"WEB_SHARE": "1.5"})


def test_the_servers_own_limits_give_the_default_budget(db) -> None:
    cap = capacity_from_server(db, reserved=5)
    row = db.execute(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
    ).fetchone()
    assert cap.available == row[0] - 5
    assert cap.source.startswith("max_connections ")


POOLED = {
    "DB_POOLER": "pgbouncer",
    "DB_CONNECTION_BUDGET": "40",
    "WEB_PROCESSES": "2",
    "WEB_THREADS": "4",
    "WORKER_PROCESSES": "4",
    "WORKER_THREADS": "8",
}


def pooled_plan(**env: str):
    settings = Settings.from_env({**POOLED, **env})
    return make_plan(settings, capacity(settings))


def test_behind_pgbouncer_the_processes_share_its_client_limit_not_postgres_connections() -> None:
    # 2 x 4 + 2 + 4 x 8 + 2 + 2 = 46 clients: more than the 40 Postgres connections, which
    # only PgBouncer's pool of 15 uses.
    plan = pooled_plan(DB_POOLER_CLIENT_LIMIT="60", DB_POOLER_POOL_SIZE="15")
    assert (plan.web.pool_size, plan.worker.pool_size) == (4, 8)
    assert plan.total == 46
    assert plan.capacity.available == 60 - 5
    lines = plan.table().splitlines()
    assert lines[6:] == [
        "total 46 of 55 available (DB_POOLER_CLIENT_LIMIT 60 - 5 reserved); headroom 9",
        "pgbouncer: 46 client connections -> a pool of 15 server connections (DB_POOLER_POOL_SIZE)",
        "postgres: 15 of 40 available (DB_CONNECTION_BUDGET); headroom 25",
    ]


def test_behind_pgbouncer_unset_limits_are_pgbouncers_own_defaults() -> None:
    plan = pooled_plan(WORKER_PROCESSES="2", WORKER_THREADS="4")
    assert plan.capacity.source == "PgBouncer's default max_client_conn 100 - 5 reserved"
    assert plan.capacity.pooler is not None
    assert plan.capacity.pooler.pool_size == 20


def test_a_plan_beyond_pgbouncers_client_limit_refuses_with_the_arithmetic() -> None:
    with pytest.raises(BudgetExceeded) as refused:
        pooled_plan(DB_POOLER_CLIENT_LIMIT="30", DB_POOLER_POOL_SIZE="15")
    assert refused.value.message == (
        "budget: 4 worker processes x 8 threads + 2 web x 1 + 2 event watches + 1 webhook x 2"
        " + 2 sweeper = 40 > 25 available (DB_POOLER_CLIENT_LIMIT 30 - 5 reserved)"
    )


def test_webhook_processes_take_their_pool_not_their_threads_and_none_when_off() -> None:
    plan = plan_for(100, WEBHOOK_PROCESSES="2", WEBHOOK_THREADS="16", WEBHOOK_POOL_SIZE="3")
    assert (plan.webhooks.processes, plan.webhooks.threads, plan.webhooks.pool_size) == (2, 16, 3)
    assert plan.webhooks.total == 6
    small = plan_for(100, WEBHOOK_THREADS="1", WEBHOOK_POOL_SIZE="3")
    assert small.webhooks.pool_size == 1  # never more connections than threads
    off = plan_for(100, WEBHOOK_PROCESSES="0")
    assert off.webhooks.total == 0
    assert plan_for(100).total - off.total == 2


def test_a_pgbouncer_pool_larger_than_postgres_allows_refuses() -> None:
    with pytest.raises(BudgetExceeded) as refused:
        pooled_plan(DB_POOLER_CLIENT_LIMIT="100", DB_POOLER_POOL_SIZE="41")
    assert refused.value.message == (
        "budget: PgBouncer's pool of 41 server connections (DB_POOLER_POOL_SIZE)"
        " > 40 available (DB_CONNECTION_BUDGET)"
    )


def test_an_unknown_pooler_is_a_bad_setting() -> None:
    from shared.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="DB_POOLER"):
        Settings.from_env({"DB_POOLER": "pgpool"})


def test_connections_behind_pgbouncer_carry_no_prepared_statements_and_no_startup_options() -> None:
    pooled = connect_kwargs(Settings.from_env({"DB_POOLER": "pgbouncer"}), "web")
    assert pooled["prepare_threshold"] is None
    assert "options" not in pooled
    direct = connect_kwargs(Settings.from_env({"STATEMENT_TIMEOUT_MS": "1234"}), "web")
    assert "prepare_threshold" not in direct
    assert "-c statement_timeout=1234" in str(direct["options"])
