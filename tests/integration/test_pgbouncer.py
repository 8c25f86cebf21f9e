"""Settle behind a real PgBouncer in transaction mode (DB_POOLER=pgbouncer): pooled and
one-off connections work across transactions, `settle migrate` gives the role the pools'
timeouts, and nothing relies on session state. Without DB_POOLER, the boot check notices a
transaction pooler (and never takes Postgres itself for one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shared.config import Settings
from shared.db.pool import connect_once, create_pool
from shared.db.pooler import check_pooler, transaction_pooled
from shared.errors import PoolerUndeclared
from tests.pgbouncer import CLIENT_LIMIT, POOL_SIZE, PgBouncer, pooled_env, running_pgbouncer
from tests.scratch import settle


@pytest.fixture
def empty_database(settings: Settings) -> Iterator[str]:
    """A database of the test's own with no schema yet; dropped afterwards."""
    name = f"settle_pgbouncer_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(settings.database_url, dbname=name)
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def pooled_settings(bouncer: PgBouncer, database_url: str) -> Settings:
    return Settings.from_env(pooled_env(bouncer, database_url))


def test_the_test_pgbouncer_loses_prepared_statements_between_transactions(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    # The failure DB_POOLER=pgbouncer exists for: psycopg prepares a query on its sixth
    # execution, and the next transaction runs on another server connection.
    url = pgbouncer.url(settings.database_url)
    pgbouncer.open_servers(settings.database_url)
    with (
        psycopg.connect(url, autocommit=True) as conn,  # psycopg's defaults
        pytest.raises(pg_errors.InvalidSqlStatementName),
    ):
        for i in range(20):
            conn.execute("SELECT %s::int", (i,))


def test_pgbouncer_refuses_the_startup_options_settle_sends_to_postgres(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(
            pgbouncer.url(settings.database_url), options="-c statement_timeout=5000"
        ).close()


def test_a_pool_behind_pgbouncer_runs_one_query_many_times_across_server_connections(
    pgbouncer: PgBouncer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    pooled = pooled_settings(pgbouncer, settings.database_url)
    pgbouncer.open_servers(settings.database_url)
    pool = create_pool(pooled, "web-test", size=2)
    pool.open(wait=True, timeout=10)
    try:
        backends = set()
        for i in range(40):
            with pool.connection() as conn:
                row = conn.execute("SELECT %s::int, pg_backend_pid()", (i,)).fetchone()
                assert row is not None and row[0] == i
                backends.add(row[1])
                with conn.transaction():
                    conn.execute("SELECT count(*) FROM accounts WHERE id = %s", (i,))
    finally:
        pool.close()
    assert len(backends) > 1  # the pooler did move the client between server connections
    # The suite's database was never migrated behind the pooler: the role has no timeouts.
    assert "runs with statement_timeout=0ms, lock_timeout=0ms" in caplog.text


def test_one_off_connections_behind_pgbouncer_run_one_query_many_times(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    pooled = pooled_settings(pgbouncer, settings.database_url)
    pgbouncer.open_servers(settings.database_url)
    with connect_once(pooled, "keys") as conn:
        for i in range(20):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)


def test_settle_migrate_behind_pgbouncer_migrates_and_gives_the_role_the_pools_timeouts(
    pgbouncer: PgBouncer, empty_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {**pooled_env(pgbouncer, empty_database), "STATEMENT_TIMEOUT_MS": "4321"}
    done = settle("migrate", env={**os.environ, **env})
    assert done.returncode == 0, done.stdout
    assert "applied" in done.stdout and "(schema up to date)" not in done.stdout
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() != (0,)

    # Server connections the pooler opens from now on start with the role's timeouts.
    pgbouncer.reconnect(empty_database)
    pooled = Settings.from_env(env)
    pool = create_pool(pooled, "web-test", size=1)
    pool.open(wait=True, timeout=10)
    try:
        with pool.connection() as conn:
            shown = conn.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('idle_in_transaction_session_timeout')"
            ).fetchone()
    finally:
        pool.close()
    assert shown == ("4321ms", "3s", "10s")
    assert "instead of" not in caplog.text

    audit = settle("audit", env={**os.environ, **env})
    assert audit.returncode == 0, audit.stdout


def test_settle_budget_reads_pgbouncers_limits_from_its_admin_console(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    pgbouncer.open_servers(settings.database_url)  # PgBouncer lists the database once used
    env = {
        **os.environ,
        "DATABASE_URL": pgbouncer.url(settings.database_url),
        "DB_POOLER": "pgbouncer",
        "DB_POOLER_ADMIN_URL": pgbouncer.admin_url(settings.database_url),
        "DB_CONNECTION_BUDGET": "40",
        "WEB_PROCESSES": "2",
        "WEB_THREADS": "4",
        "WORKER_PROCESSES": "2",
    }
    done = settle("budget", env=env)
    assert done.returncode == 0, done.stdout
    # web 2 x 4, events 2 x 1, worker 2 x 4, webhooks 1 x 2, sweeper 2 (its dispatcher's too)
    clients = 8 + 2 + 8 + 2 + 2
    assert done.stdout.splitlines()[-3:] == [
        f"total {clients} of {CLIENT_LIMIT - 5} available (PgBouncer's max_client_conn"
        f" {CLIENT_LIMIT} - 5 reserved); headroom {CLIENT_LIMIT - 5 - clients}",
        f"pgbouncer: {clients} client connections -> a pool of {POOL_SIZE} server connections"
        " (PgBouncer's pool for the database)",
        f"postgres: {POOL_SIZE} of 40 available (DB_CONNECTION_BUDGET); headroom {40 - POOL_SIZE}",
    ]


# --- A transaction pooler that DB_POOLER does not declare is noticed at boot -----------


def test_postgres_itself_is_never_taken_for_a_pooler(settings: Settings) -> None:
    for _ in range(5):
        assert not transaction_pooled(settings.database_url)
    check_pooler(settings)  # raises nothing


def test_pgbouncer_in_transaction_mode_handing_out_servers_round_robin_is_noticed(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    pgbouncer.open_servers(settings.database_url)
    url = pgbouncer.url(settings.database_url)
    for _ in range(5):
        assert transaction_pooled(url)


@pytest.mark.parametrize("servers", [0, 3])
def test_pgbouncer_in_transaction_mode_with_its_defaults_is_noticed(
    settings: Settings, servers: int
) -> None:
    """PgBouncer's default hands out the server connection it got back last (one client
    alone would keep one server), and many sites let it drop the startup options that
    Settle sends without DB_POOLER: the setup where Settle booted and then answered 500."""
    with running_pgbouncer(
        settings.database_url,
        server_round_robin="0",
        min_pool_size="0",
        ignore_startup_parameters="options",
    ) as bouncer:
        if servers:
            bouncer.open_servers(settings.database_url, count=servers)
        url = bouncer.url(settings.database_url)
        for _ in range(5):
            assert transaction_pooled(url)
        undeclared = Settings.from_env({"DATABASE_URL": url})
        with pytest.raises(PoolerUndeclared, match="DB_POOLER") as refused:
            check_pooler(undeclared)
        assert "\n" not in refused.value.message
        check_pooler(undeclared.with_(db_pooler="pgbouncer"))  # declared: nothing to say


def test_pgbouncer_in_session_mode_is_not_a_transaction_pooler(settings: Settings) -> None:
    """A session pooler gives each client one server connection for its life: sessions
    work through it, and Settle needs no DB_POOLER."""
    with running_pgbouncer(settings.database_url, pool_mode="session") as bouncer:
        url = bouncer.url(settings.database_url)
        for _ in range(5):
            assert not transaction_pooled(url)
