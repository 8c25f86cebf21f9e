"""Peak Postgres connections per role during a bounded load, next to the budget's plan.

    python -m bench.connections [--budget 12] [--transfers 1000] [--concurrency 16]

Starts web, worker and sweeper on a scratch database (DATABASE_URL / REDIS_URL, or embedded
servers), samples pg_stat_activity every 100 ms while it submits transfers over HTTP and
waits for them to settle, then prints the sampled peaks beside the plan.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psycopg

from bench.harness import (
    Processes,
    bench_servers,
    funded_accounts,
    operator_headers,
    post_transfers,
    ready,
    wait_terminal,
    wait_until,
)
from shared.db.activity import Sampler
from shared.db.budget import Capacity, make_plan
from shared.runtime.embedded import free_port
from shared.runtime.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=12, help="DB_CONNECTION_BUDGET")
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=20)
    args = parser.parse_args()

    with bench_servers() as (url, name, redis_url):
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "BROKER_NAMESPACE": f"bench-{name}",
            "PORT": str(free_port()),
            "DB_CONNECTION_BUDGET": str(args.budget),
            "WEB_PROCESSES": os.environ.get("WEB_PROCESSES", "2"),
            "WEB_THREADS": os.environ.get("WEB_THREADS", "4"),
            "WORKER_PROCESSES": os.environ.get("WORKER_PROCESSES", "2"),
            "WORKER_THREADS": os.environ.get("WORKER_THREADS", "3"),
        }
        settings = Settings.from_env(env)
        plan = make_plan(settings, Capacity(args.budget, "DB_CONNECTION_BUDGET"))
        with psycopg.connect(url, autocommit=True) as conn:
            accounts = funded_accounts(conn, args.accounts, balance=1_000_000)
            headers = operator_headers(conn)
        pairs = [
            (accounts[i % len(accounts)], accounts[(i + 1) % len(accounts)], 1 + i % 100)
            for i in range(args.transfers)
        ]
        port = int(env["PORT"])
        with tempfile.TemporaryDirectory(prefix="settle-bench-") as logs:
            procs = Processes(env, Path(logs))
            try:
                for role in ("web", "worker", "sweeper"):
                    procs.start(role)
                wait_until(lambda: ready(port), timeout=60, what="web is ready")
                with Sampler(url, name) as sampler:
                    started = time.monotonic()
                    ids = post_transfers(
                        port, pairs, concurrency=args.concurrency, timeout=120, headers=headers
                    )
                    wait_terminal(url, ids, timeout=120)
                    elapsed = time.monotonic() - started
            finally:
                codes = procs.stop_all()

    print(
        f"{len(ids)} transfers accepted and settled in {elapsed:.1f}s"
        f" ({len(ids) / elapsed:.0f}/s); {sampler.samples} samples of pg_stat_activity"
    )
    print(f"{'role':8} {'plan':>5} {'peak':>5}")
    for role in plan.roles:
        print(f"{role.role:8} {role.total:5d} {sampler.peak[role.role]:5d}")
    print(f"{'total':8} {plan.total:5d} {sampler.peak_total:5d}   budget {args.budget}")
    over = [role.role for role in plan.roles if sampler.peak[role.role] > role.total]
    print("exit codes:", codes)
    if over or sampler.peak_total > args.budget:
        raise SystemExit(f"bench: over the plan for {over or 'the total'}")


if __name__ == "__main__":
    main()
