"""A real PgBouncer in transaction mode in front of the test Postgres, for the tests that run
Settle through a pooler.

Debian's package (1.18) is installed with apt when it is absent. PgBouncer refuses to run as
root, so under root it runs as a system user made for it (`settle-pgbouncer`), with its
config, auth file, log and pid file in a folder that user owns. It listens on a free port on
127.0.0.1, trusts its clients (the test Postgres does too), and hands out server connections
round robin, so that a statement prepared on one server connection is not there on the next
transaction's: the failure transaction pooling causes shows up at once instead of by chance.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.runtime.embedded import free_port

USER = "settle-pgbouncer"
#: Server connections PgBouncer may open per database and user (its `default_pool_size`).
POOL_SIZE = 20
#: Client connections it accepts (its `max_client_conn`).
CLIENT_LIMIT = 400


def pgbouncer_binary() -> str:
    """The pgbouncer executable, installed with apt when absent."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, check=True)
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _run_as(postgres_host: str) -> pwd.struct_passwd | None:
    """The unprivileged user to run PgBouncer as when this process is root, or None when this
    process is not root: the owner of the socket folder when Postgres is reached through a
    Unix socket (an embedded Postgres keeps it private to its own user), else a system user
    made for it if absent."""
    if os.geteuid() != 0:
        return None
    if postgres_host.startswith("/"):
        owner = pwd.getpwuid(Path(postgres_host).stat().st_uid)
        if owner.pw_uid != 0:
            return owner
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
        return pwd.getpwnam(USER)


@dataclass
class PgBouncer:
    """A running PgBouncer: its port, the URL of a database through it, and its admin console."""

    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def url(self, database_url: str) -> str:
        """`database_url` (a database on the test Postgres) reached through this PgBouncer."""
        return make_conninfo(database_url, host=self.host, port=str(self.port))

    def admin_url(self, database_url: str) -> str:
        """PgBouncer's admin console (`SHOW POOLS`, `SHOW CONFIG`, ...)."""
        return make_conninfo(database_url, host=self.host, port=str(self.port), dbname="pgbouncer")

    def show(self, database_url: str, what: str) -> list[dict[str, object]]:
        """Rows of `SHOW <what>` on the admin console (simple protocol, autocommit)."""
        with psycopg.connect(self.admin_url(database_url), autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(f"SHOW {what}".encode(), prepare=False)  # admin commands take no params
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def open_servers(self, database_url: str, count: int = 3) -> None:
        """Make PgBouncer open `count` server connections to `database_url`'s database (as
        many clients in a transaction at once), so that the round robin has several to
        hand out from the first transaction on."""
        clients = [psycopg.connect(self.url(database_url)) for _ in range(count)]
        try:
            for conn in clients:
                conn.execute("SELECT 1")  # each holds a server connection until it commits
            for conn in clients:
                conn.commit()  # a client leaving mid-transaction would cost its server
        finally:
            for conn in clients:
                conn.close()

    def reconnect(self, database_url: str) -> None:
        """`RECONNECT <db>`: replace the server connections to `database_url`'s database as
        they are released (new ones start with the role's current defaults)."""
        dbname = str(conninfo_to_dict(database_url)["dbname"])
        with psycopg.connect(self.admin_url(database_url), autocommit=True) as conn:
            conn.execute(f"RECONNECT {dbname}".encode(), prepare=False)

    def logs(self) -> str:
        log = self.folder / "pgbouncer.log"
        return log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)  # immediate shutdown
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _config(
    postgres: dict[str, str], port: int, folder: Path, admin: str, overrides: dict[str, str]
) -> str:
    options = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(folder / "userlist.txt"),
        "admin_users": admin,
        "stats_users": admin,
        "pool_mode": "transaction",
        "default_pool_size": str(POOL_SIZE),
        "max_client_conn": str(CLIENT_LIMIT),
        "server_round_robin": "1",
        "min_pool_size": "2",
        "logfile": str(folder / "pgbouncer.log"),
        "pidfile": str(folder / "pgbouncer.pid"),
        **overrides,
    }
    lines = "".join(f"{name} = {value}\n" for name, value in options.items())
    return f"""\
[databases]
* = host={postgres.get("host", "127.0.0.1")} port={postgres.get("port", "5432")}

[pgbouncer]
{lines}"""


@contextlib.contextmanager
def running_pgbouncer(postgres_url: str, **overrides: str) -> Iterator[PgBouncer]:
    """Start PgBouncer in transaction mode in front of the server of `postgres_url`; stop it
    and remove its folder on exit. Fails with its log when it does not come up. `overrides`
    replace or add settings of its `[pgbouncer]` section (e.g. `pool_mode="session"`)."""
    binary = pgbouncer_binary()
    postgres = {k: str(v) for k, v in conninfo_to_dict(postgres_url).items()}
    owner = _run_as(postgres.get("host", "127.0.0.1"))
    user = postgres.get("user", "postgres")
    folder = Path(tempfile.mkdtemp(prefix="settle-pgbouncer-"))
    port = free_port()
    (folder / "pgbouncer.ini").write_text(_config(postgres, port, folder, user, overrides))
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    if owner is not None:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    command = [binary, str(folder / "pgbouncer.ini")]
    if owner is not None:
        command = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}",
                   "--clear-groups", *command]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    bouncer = PgBouncer("127.0.0.1", port, folder, process)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                bouncer.show(postgres_url, "VERSION")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer did not start:\n{bouncer.logs()}") from None
                time.sleep(0.1)
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(folder, ignore_errors=True)


def pooled_env(bouncer: PgBouncer, database_url: str) -> dict[str, str]:
    """The settings of a Settle that reaches `database_url` through `bouncer`, with the
    direct URL for its session work and the pooler's limits as configured above."""
    return {
        "DATABASE_URL": bouncer.url(database_url),
        "DATABASE_DIRECT_URL": database_url,
        "DB_POOLER": "pgbouncer",
        "DB_POOLER_CLIENT_LIMIT": str(CLIENT_LIMIT),
        "DB_POOLER_POOL_SIZE": str(POOL_SIZE),
    }
