"""Shared pieces of the benchmarks: servers, a scratch database, the real processes and
their environment, the Express peer, random transfers, and a small HTTP load generator.
Every section imports from here and nothing here imports a section, so `bench.suite` can
import the sections. Every load is bounded in count and time and targets 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from bench.load import libpq_env, require
from bench.memory import RssSampler
from shared.config import Settings
from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewAccount, NewTransfer, NewUser
from shared.ratelimit.limits import MAX_BURST, MAX_RATE
from shared.runtime.embedded import free_port, start_embedded
from shared.testing.scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent
SETTLE = Path(sys.executable).with_name("settle")
PEER = ROOT / "bench" / "peers" / "express"


@contextlib.contextmanager
def bench_servers() -> Iterator[tuple[str, str, str]]:
    """(database_url, database_name, redis_url): a scratch database
    (`shared.testing.scratch`) on DATABASE_URL's server (embedded servers when DATABASE_URL /
    REDIS_URL are unset), dropped afterwards with the run's broker keys."""
    admin = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    embedded = start_embedded(
        ROOT / ".settle" / "bench-servers", postgres=not admin, redis=not redis_url
    )
    admin = admin or embedded.database_url
    redis_url = redis_url or embedded.redis_url
    assert admin and redis_url
    try:
        with scratch_database(admin, prefix="settle_bench") as url:
            name = str(conninfo_to_dict(url)["dbname"])
            try:
                yield url, name, redis_url
            finally:
                client = redis.Redis.from_url(redis_url)
                stale = list(client.scan_iter(match=f"*{name}*", count=1000))  # its broker keys
                if stale:
                    client.delete(*stale)
                client.close()
    finally:
        embedded.stop()


def operator_headers(conn: psycopg.Connection) -> dict[str, str]:
    """An Authorization header with a new operator API key (the API needs one)."""
    return {"Authorization": f"Bearer {auth.create_key(conn, user_id=None, label='bench').key}"}


def funded_accounts(conn: psycopg.Connection, count: int, *, balance: int) -> list[int]:
    """`count` EUR accounts, each funded with `balance` from a new treasury account."""
    suffix = uuid.uuid4().hex[:8]
    treasury_owner = ledger.create_user(
        conn, NewUser(f"treasury-{suffix}@bench.example", "T"), by=SYSTEM
    )
    treasury = ledger.create_account(
        conn, NewAccount(treasury_owner["id"], "EUR", True), by=SYSTEM
    )["id"]
    accounts = []
    for i in range(count):
        owner = ledger.create_user(
            conn, NewUser(f"user{i}-{suffix}@bench.example", f"U{i}"), by=SYSTEM
        )
        account = ledger.create_account(conn, NewAccount(owner["id"], "EUR", False), by=SYSTEM)[
            "id"
        ]
        funding = NewTransfer(treasury, account, balance, "EUR", f"bench-fund-{account}")
        ledger.settle_transfer(conn, ledger.submit_transfer(conn, funding, by=SYSTEM)["id"])
        accounts.append(account)
    return accounts


class Processes:
    """`settle <role>` processes sharing one environment; stopped with SIGTERM on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: dict[int, Path] = {}  # pid -> its log

    def start(self, role: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{role}-{len(self.running)}.log"
        log = path.open("wb")
        proc = subprocess.Popen(
            [str(SETTLE), role],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running.append((role, proc))
        self.logs[proc.pid] = path
        return proc

    def stop_all(self, timeout: float = 60) -> dict[str, int]:
        for _, proc in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        codes: dict[str, int] = {}
        for role, proc in self.running:
            try:
                codes[role] = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[role] = -9
        return codes


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting until {what}")
        time.sleep(0.1)


def ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def post_transfers(
    port: int,
    pairs: list[tuple[int, int, int]],
    *,
    concurrency: int,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> list[int]:
    """POST every (from, to, amount) with `concurrency` keep-alive clients; retry 503s with
    the same Idempotency-Key until `timeout`. Returns the accepted transfer ids."""
    deadline = time.monotonic() + timeout
    local = threading.local()

    def one(pair: tuple[int, int, int]) -> int:
        body = json.dumps(
            dict(zip(("from_account_id", "to_account_id", "amount"), pair, strict=True))
        ).encode()
        key = uuid.uuid4().hex
        while time.monotonic() < deadline:
            if getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                local.conn.request(
                    "POST",
                    "/transfers",
                    body=body,
                    headers={
                        "Content-Type": "application/json",
                        "Idempotency-Key": key,
                        **(headers or {}),
                    },
                )
                resp = local.conn.getresponse()
                answer = json.loads(resp.read())
            except (OSError, http.client.HTTPException):
                local.conn.close()
                local.conn = None
                continue
            if resp.status == 202:
                return int(answer["data"]["id"])
            if resp.status != 503:
                raise SystemExit(f"bench: POST /transfers answered {resp.status}: {answer}")
            time.sleep(float(resp.getheader("Retry-After", "1")) / 10)
        raise SystemExit("bench: transfers not accepted in time")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, pairs))


def wait_terminal(url: str, ids: list[int], timeout: float) -> None:
    with psycopg.connect(url, autocommit=True) as conn:

        def done() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM transfers WHERE id = ANY(%s) AND status = 'pending'",
                (ids,),
            ).fetchone()
            return row is not None and row[0] == 0

        wait_until(done, timeout=timeout, what="every transfer is terminal")


def bulk_accounts(conn: psycopg.Connection, count: int, *, balance: int) -> tuple[range, range]:
    """(user ids, account ids): `count` users with one EUR account each, every account funded
    with `balance` from a new treasury account. Set-based, so thousands take a second: the
    funding transfers are inserted pending and settled by the ledger's own
    `settle_transfer(id)` in one statement, so every invariant holds as usual."""
    tag = uuid.uuid4().hex[:8]
    with conn.transaction():
        treasury = conn.execute(
            "WITH u AS (INSERT INTO users (email, name) VALUES (%s, 'Treasury') RETURNING id)"
            " INSERT INTO accounts (user_id, currency, allow_negative_balance)"
            " SELECT id, 'EUR', true FROM u RETURNING id",
            (f"treasury-{tag}@bench.example",),
        ).fetchall()[0][0]
        rows = conn.execute(
            "WITH u AS (INSERT INTO users (email, name)"
            " SELECT format('user%%s-%%s@bench.example', g, %s::text), format('U%%s', g)"
            " FROM generate_series(1, %s) AS g RETURNING id)"
            " INSERT INTO accounts (user_id, currency) SELECT id, 'EUR' FROM u ORDER BY id"
            " RETURNING user_id, id",
            (tag, count),
        ).fetchall()
    users = sorted(row[0] for row in rows)
    accounts = sorted(row[1] for row in rows)
    # Identity columns in one statement on a fresh database: consecutive ids, which the
    # load generators pick at random between the first and the last.
    assert users[-1] - users[0] == accounts[-1] - accounts[0] == count - 1
    funding = insert_pending(
        conn, [(treasury, account, balance) for account in accounts], tag=f"fund-{tag}"
    )
    conn.execute("SELECT settle_transfer(id) FROM unnest(%s::bigint[]) AS id", (funding,))
    return range(users[0], users[-1] + 1), range(accounts[0], accounts[-1] + 1)


def insert_pending(
    conn: psycopg.Connection, transfers: list[tuple[int, int, int]], *, tag: str
) -> list[int]:
    """Insert (from, to, amount) EUR transfers as pending, in the operator's idempotency scope,
    in one statement; their ids. Nothing queues them."""
    payers, payees, amounts = (list(column) for column in zip(*transfers, strict=True))
    rows = conn.execute(
        "INSERT INTO transfers (idempotency_scope, idempotency_key, request_hash,"
        " from_account_id, to_account_id, amount, currency)"
        " SELECT 'operator', %s || '-' || n, 'bench', payer, payee, amount, 'EUR'"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
        " WITH ORDINALITY AS t(payer, payee, amount, n) ORDER BY n RETURNING id",
        (tag, payers, payees, amounts),
    ).fetchall()
    return [int(row[0]) for row in rows]


def service_env(url: str, name: str, redis_url: str) -> dict[str, str]:
    """The processes' environment: the default settings (any setting exported in this shell
    is dropped) but a rate limit no run reaches, the scratch database, a broker namespace of
    its own and a free port."""
    env = dict(os.environ)
    for f in fields(Settings):
        env.pop(f.name.upper(), None)
    env.update(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        BROKER_NAMESPACE=f"bench-{name}",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        # The read ladder's middle rungs (web/ladder.py); never set in production.
        BENCH_ROUTES="true",
        # Every request pays the rate-limit check, as by default; none is refused. Section 7
        # measures what the check costs.
        RATE_LIMIT_PER_SECOND=str(MAX_RATE),
        RATE_LIMIT_BURST=str(MAX_BURST),
        # Webhooks (section 3d): signing needs a secret, and the receivers are on 127.0.0.1.
        SECRET_KEY=f"bench-{uuid.uuid4().hex}{uuid.uuid4().hex}",
        WEBHOOK_ALLOW_PRIVATE="true",
    )
    return env


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM to the process group (as honcho does), then its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def random_transfers(rng: random.Random, accounts: range, count: int) -> list[tuple[int, int, int]]:
    """`count` (from, to, amount) between two distinct random accounts, 1..100 cents each:
    the funded balances cover every one, so each settles."""
    out = []
    for _ in range(count):
        payer, payee = rng.sample(accounts, 2)
        out.append((payer, payee, rng.randint(1, 100)))
    return out


def worker_ready(procs: Processes, worker: subprocess.Popen[bytes], processes: int) -> bool:
    """Whether every dramatiq process of this `settle worker` is consuming."""
    log = procs.logs[worker.pid].read_text(errors="replace")
    return log.count("Worker process is ready for action.") >= processes


@contextlib.contextmanager
def express_peer(url: str, logs: Path, rss: RssSampler) -> Iterator[tuple[int, int]]:
    """(port, pid) of the Express peer on a free port, reading `url`'s database; stopped on
    exit."""
    require("node", "nodejs")
    if not (PEER / "node_modules").is_dir():
        raise SystemExit(f"bench: run `npm ci` in {PEER} first (`make bench` does)")
    port = free_port()
    with (logs / "express.log").open("wb") as log:
        proc = subprocess.Popen(
            ["node", "server.js"],
            cwd=PEER,
            env={**os.environ, **libpq_env(url), "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    rss.watch("express", proc.pid)
    try:
        wait_until(lambda: answers(port, "/users/0") == 404, timeout=30, what="the peer listens")
        yield port, proc.pid
    finally:
        stop(proc)


def answers(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Service:
    """A section run on its own: scratch servers, 2,000 funded accounts, and web, worker and
    sweeper started as `make run` starts them (see `standalone_service`)."""

    url: str
    conn: psycopg.Connection
    accounts: range
    key: str
    env: dict[str, str]
    port: int
    web: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]


@contextlib.contextmanager
def standalone_service() -> Iterator[Service]:
    """What `python -m bench.<section>` needs before its rounds: scratch Postgres and Redis,
    2,000 accounts with ample balances, an operator key, and the three processes ready (the
    worker's settling and webhook processes all booted). Everything is stopped on exit."""
    with (
        bench_servers() as (url, name, redis_url),
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        _, accounts = bulk_accounts(conn, 2000, balance=10_000_000)
        key = operator_headers(conn)["Authorization"].removeprefix("Bearer ")
        env = service_env(url, name, redis_url)
        settings = Settings.from_env(env)
        procs = Processes(env, Path(tmp))
        try:
            web = procs.start("web")
            worker = procs.start("worker")
            procs.start("sweeper")
            port = int(env["PORT"])
            booted = settings.worker_processes + settings.webhook_processes
            wait_until(lambda: ready(port), timeout=60, what="settle web is ready")
            wait_until(
                lambda: worker_ready(procs, worker, booted),
                timeout=60,
                what="settle worker is ready",
            )
            yield Service(url, conn, accounts, key, env, port, web, worker)
        finally:
            procs.stop_all()
