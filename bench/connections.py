"""Peak Postgres connections per role during a bounded load, next to the budget's plan.

    python -m bench.connections [--budget 15] [--transfers 1000] [--concurrency 16]

Starts web, worker and sweeper on a scratch database (DATABASE_URL / REDIS_URL, or embedded
servers), samples pg_stat_activity every 100 ms while it submits transfers over HTTP and
waits for them to settle, then prints the sampled peaks beside the plan.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
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
from shared.config import Settings
from shared.db.activity import Sampler
from shared.db.budget import Capacity, make_plan
from shared.runtime.embedded import free_port

#: The budget the section runs with: every role gets its full pool but web, which the budget
#: squeezes to one connection per process for its four threads (the case the plan's
#: arithmetic and the leases must hold), with one connection to spare. Web 2 x 1 + event
#: watches 2 + worker 2 x 3 + webhook delivery 1 x 2 + sweeper 2 = 14 of 15. Before the
#: webhook processes and the sweeper's dispatcher it was 11 of 12: the same shape.
BUDGET = 15


@dataclass
class Measured:
    """The plan beside the sampled peaks of one bounded load."""

    transfers: int
    seconds: float
    samples: int
    budget: int
    plan: dict[str, int]  # role -> connections the plan gives it
    peak: dict[str, int]  # role -> most connections seen at once
    plan_total: int
    peak_total: int
    exit_codes: dict[str, int]

    @property
    def over(self) -> list[str]:
        return [role for role, planned in self.plan.items() if self.peak[role] > planned]


def measure(
    *, budget: int = BUDGET, transfers: int = 1000, concurrency: int = 16, accounts: int = 20
) -> Measured:
    """Start web, worker and sweeper on a scratch database with DB_CONNECTION_BUDGET=`budget`,
    submit `transfers` over HTTP, wait until they settle, sampling pg_stat_activity."""
    with bench_servers() as (url, name, redis_url):
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "BROKER_NAMESPACE": f"bench-{name}",
            "PORT": str(free_port()),
            "DB_CONNECTION_BUDGET": str(budget),
            "WEB_PROCESSES": os.environ.get("WEB_PROCESSES", "2"),
            "WEB_THREADS": os.environ.get("WEB_THREADS", "4"),
            "WORKER_PROCESSES": os.environ.get("WORKER_PROCESSES", "2"),
            "WORKER_THREADS": os.environ.get("WORKER_THREADS", "3"),
            # What is measured is connections, not the rate limit: no key is limited.
            "RATE_LIMIT_PER_SECOND": "0",
        }
        settings = Settings.from_env(env)
        plan = make_plan(settings, Capacity(budget, "DB_CONNECTION_BUDGET"))
        with psycopg.connect(url, autocommit=True) as conn:
            funded = funded_accounts(conn, accounts, balance=1_000_000)
            headers = operator_headers(conn)
        pairs = [
            (funded[i % len(funded)], funded[(i + 1) % len(funded)], 1 + i % 100)
            for i in range(transfers)
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
                        port, pairs, concurrency=concurrency, timeout=120, headers=headers
                    )
                    wait_terminal(url, ids, timeout=120)
                    elapsed = time.monotonic() - started
            finally:
                codes = procs.stop_all()
    return Measured(
        transfers=len(ids),
        seconds=elapsed,
        samples=sampler.samples,
        budget=budget,
        plan={role.role: role.total for role in plan.roles},
        peak={role.role: sampler.peak[role.role] for role in plan.roles},
        plan_total=plan.total,
        peak_total=sampler.peak_total,
        exit_codes=codes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=BUDGET, help="DB_CONNECTION_BUDGET")
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=20)
    args = parser.parse_args()
    m = measure(
        budget=args.budget,
        transfers=args.transfers,
        concurrency=args.concurrency,
        accounts=args.accounts,
    )
    print(
        f"{m.transfers} transfers accepted and settled in {m.seconds:.1f}s"
        f" ({m.transfers / m.seconds:.0f}/s); {m.samples} samples of pg_stat_activity"
    )
    print(f"{'role':8} {'plan':>5} {'peak':>5}")
    for role, planned in m.plan.items():
        print(f"{role:8} {planned:5d} {m.peak[role]:5d}")
    print(f"{'total':8} {m.plan_total:5d} {m.peak_total:5d}   budget {m.budget}")
    print("exit codes:", m.exit_codes)
    if m.over or m.peak_total > m.budget:
        raise SystemExit(f"bench: over the plan for {m.over or 'the total'}")


if __name__ == "__main__":
    main()
