"""How long a transfer caught in flight on a killed worker takes to settle.

Each round starts `settle worker` (WORKER_PROCESSES x WORKER_THREADS, 2 x 4 unless set; no
sweeper, so only the broker can bring the message back), holds a lock on the payer so that
the transfer's settlement is in progress in a worker thread, then SIGKILLs that worker process
and ends its Postgres backend (which would otherwise finish the statement on its own). The
clock runs from the kill until the transfer is settled: dramatiq's master notices the death
and exits, `settle worker` starts dramatiq again, and the killed worker's unacked message
comes back: on Redis once its heartbeat has expired
(`shared.broker.redis_broker.HEARTBEAT_TIMEOUT_MS`), by the next heartbeat's maintenance; on
RabbitMQ as soon as the killed process's connection closes.

    .venv/bin/python -m bench.recovery [--rounds 5] [--broker redis|rabbitmq|both]

With `--broker both` (the default) each round runs once on each broker, alternating, so
that both see the same machine load. Uses DATABASE_URL / REDIS_URL when set (a scratch
database and broker namespace of its own), embedded servers otherwise; RabbitMQ is
RABBITMQ_URL (default `amqp://guest:guest@127.0.0.1:5672/`), in a vhost of the run's own
made with `rabbitmqctl` on this machine. Prints one line per round and a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import redis

from bench.harness import bench_servers
from shared.broker.sending import sender as sender_for
from shared.config import Settings
from shared.ledger import operations as ledger
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewAccount, NewTransfer, NewUser
from shared.testing.scratch import scratch_vhost
from worker.actors import create_broker

SETTLE = Path(sys.executable).with_name("settle")
T = TypeVar("T")
TARGET_SECONDS = 15.0


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench recovery: timed out waiting until {what}")
        time.sleep(0.02)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(SETTLE), "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    processes = int(env["WORKER_PROCESSES"])
    wait_for(
        lambda: (
            log.read_text(errors="replace").count("Worker process is ready for action.")
            >= processes
        ),
        timeout=60,
        what="the worker is ready",
    )
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def waiting_worker(conn: psycopg.Connection) -> tuple[int, int] | None:
    """(worker process pid, backend pid) of a worker connection waiting for a lock."""
    row = conn.execute(
        "SELECT application_name, pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE %s AND wait_event_type = 'Lock' LIMIT 1",
        ("settle:worker:%",),
    ).fetchone()
    return None if row is None else (int(str(row[0]).rsplit(":", 1)[1]), int(row[1]))


def one_round(
    env: dict[str, str], conn: psycopg.Connection, accounts: tuple[int, int], log: Path
) -> float:
    payer, payee = accounts
    worker = start_worker(env, log)
    settings = Settings.from_env(env)
    sender, _ = create_broker(settings)
    try:
        new = NewTransfer(payer, payee, 100, None, uuid.uuid4().hex)
        transfer = int(ledger.submit_transfer(conn, new, by=SYSTEM)["id"])
        with psycopg.connect(settings.database_url) as holder:
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
            sender_for(sender)(transfer)
            pid, backend = wait_for(
                lambda: waiting_worker(conn), timeout=30, what="the transfer is in flight"
            )
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
            holder.rollback()

        def settled() -> bool:
            row = conn.execute("SELECT status FROM transfers WHERE id = %s", (transfer,)).fetchone()
            return row is not None and row[0] == "settled"

        wait_for(settled, timeout=300, what=f"transfer {transfer} settles")
        return time.monotonic() - killed
    finally:
        sender.close()
        stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.recovery", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    args = parser.parse_args()
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with (
        bench_servers() as (url, name, redis_url),
        tempfile.TemporaryDirectory() as logs,
        contextlib.ExitStack() as stack,
    ):
        namespace = f"bench-{name}"  # the scratch database's broker keys go with it
        broker_urls = {"redis": redis_url}
        if "rabbitmq" in brokers:
            broker_urls["rabbitmq"] = stack.enter_context(
                scratch_vhost(rabbitmq_url, prefix="settle-bench")
            )
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "BROKER_NAMESPACE": namespace,
            "WORKER_PROCESSES": os.environ.get("WORKER_PROCESSES", "2"),
            "WORKER_THREADS": os.environ.get("WORKER_THREADS", "4"),
            # The transfer waits for the lock for as long as the round needs.
            "LOCK_TIMEOUT_MS": "120000",
            "STATEMENT_TIMEOUT_MS": "120000",
        }
        with psycopg.connect(url, autocommit=True) as conn:
            owner = ledger.create_user(
                conn, NewUser(f"bench-{namespace}@example.com", "B"), by=SYSTEM
            )
            treasury = ledger.create_account(conn, NewAccount(owner["id"], "EUR", True), by=SYSTEM)
            payee = ledger.create_account(conn, NewAccount(owner["id"], "EUR", False), by=SYSTEM)
            accounts = (int(treasury["id"]), int(payee["id"]))
            print(
                f"kill -9 of the worker process settling a transfer ({env['WORKER_PROCESSES']}"
                f" processes x {env['WORKER_THREADS']} threads, no sweeper)",
                flush=True,
            )
            figures: dict[str, list[float]] = {broker: [] for broker in brokers}
            try:
                for n in range(1, args.rounds + 1):
                    for broker in brokers:
                        on = {**env, "BROKER_URL": broker_urls[broker]}
                        log = Path(logs) / f"worker-{broker}-{n}.log"
                        seconds = one_round(on, conn, accounts, log)
                        figures[broker].append(seconds)
                        print(
                            f"round {n} ({broker}): settled {seconds:.2f}s after the kill",
                            flush=True,
                        )
            finally:
                client = redis.Redis.from_url(redis_url)
                keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()
        for broker, rounds in figures.items():
            print(
                f"{broker}: recovery of an in-flight transfer: median"
                f" {statistics.median(rounds):.2f}s, max {max(rounds):.2f}s over"
                f" {len(rounds)} rounds (target {TARGET_SECONDS:.0f}s)"
            )
        if len(figures) == 2:
            ratio = statistics.median(figures["rabbitmq"]) / statistics.median(figures["redis"])
            print(f"rabbitmq / redis median recovery: {ratio:.2f}x (rounds alternated)")


if __name__ == "__main__":
    main()
