"""The bench suite: Settle beside its baselines, every figure a ratio measured in one command.

    make bench                 # or: .venv/bin/python -m bench.suite [--quick] [--rate 300]
    BENCH_QUICK=1 make bench   # a short smoke pass (small counts, a few seconds per round)

Sections: 1 reads (`bench.reads`: a ladder of reads by wrk against `settle web`, each rung
beside the Express peer, and the spread of connections over the web processes), 2 settlement
(`settle worker` draining pending transfers, against pgbench tpcb-like), 3 intake and
end-to-end (POST /transfers at a fixed offered rate), 3b saturation (POST /transfers flat out
in wrk's closed loop and whether settlement keeps up, against pgbench; bench.saturation), 3c
POST /transfers/batch of 1,000 flat out, settled/s against pgbench (bench.batches), 3d
accepted -> settled at the intake rate with failing webhook receivers subscribed to every
event, beside the same run without (bench.webhooks), 4
the cost of not pooling (pgbench with and without a new connection per transaction), 5 GET
/transfers on a million transfers beside GET /transfers/{id} (bench.listing), peak RSS per
process, 6 the connection budget (bench.connections), 7 the cost of the per-key rate-limit
check (bench.ratelimit; the other sections run with a limit no run reaches, so every request
pays the check). Baseline and subject alternate, A B A B, and medians are quoted, since
absolute figures drift on a shared machine. Everything runs on scratch databases and a
broker namespace of its own (DATABASE_URL / REDIS_URL's servers, or embedded ones), dropped
afterwards. Prints a table and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import batches as bench_batches
from bench import connections
from bench import listing as bench_listing
from bench import ratelimit as bench_ratelimit
from bench import reads as bench_reads
from bench import saturation as bench_saturation
from bench import webhooks as bench_webhooks
from bench.harness import (
    SETTLE,
    Processes,
    bench_servers,
    bulk_accounts,
    express_peer,
    insert_pending,
    operator_headers,
    random_transfers,
    ready,
    service_env,
    stop,
    wait_terminal,
    wait_until,
    worker_ready,
)
from bench.load import Offered, offer_transfers, pgbench
from bench.memory import RssSampler
from shared.config import Settings
from shared.db.budget import capacity, make_plan

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"


@dataclass(frozen=True)
class Config:
    """Counts and durations of one run."""

    quick: bool
    accounts: int = 2000  # users, each with one account: the read ids and the payers
    read_seconds: float = 8.0
    rounds: int = 3  # A B A B A B: the median of three
    settle_transfers: int = 10_000
    pgbench_seconds: float = 8.0
    intake_rate: float = 300.0
    intake_seconds: float = 30.0
    saturation_seconds: float = 15.0
    webhook_seconds: float = 20.0
    pool_seconds: float = 5.0
    pool_clients: int = 8
    budget_transfers: int = 1000
    listing_transfers: int = 1_000_000
    listing_seconds: float = 5.0

    @classmethod
    def make(cls, *, quick: bool, rate: float | None, intake_seconds: float | None) -> Config:
        base = (
            cls(
                quick=True,
                accounts=1000,
                read_seconds=2,
                settle_transfers=2000,
                pgbench_seconds=2,
                intake_rate=100,
                intake_seconds=5,
                saturation_seconds=5,
                webhook_seconds=5,
                rounds=2,
                pool_seconds=2,
                budget_transfers=200,
                listing_transfers=100_000,
                listing_seconds=2,
            )
            if quick
            else cls(quick=False)
        )
        return cls(
            **{
                **asdict(base),
                "intake_rate": rate or base.intake_rate,
                "intake_seconds": intake_seconds or base.intake_seconds,
            }
        )


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# 2. Settlement -------------------------------------------------------------------------------


def settlement(
    cfg: Config,
    env: dict[str, str],
    procs: Processes,
    rss: RssSampler,
    url: str,
    conn: psycopg.Connection,
    accounts: range,
) -> dict:
    from worker import actors

    settings = Settings.from_env(env)
    plan = make_plan(settings, capacity(settings))
    clients = next(role.total for role in plan.roles if role.role == "worker")
    # The composition root's own call: builds the broker and declares the actors on it.
    broker = actors.declare(settings)
    # The product's own way of queueing many ids: its batch form (what the sweeper uses).
    enqueue = broker.send_batches

    rng = random.Random(8)
    pg_name = f"{conninfo_dbname(url)}_pgbench"
    pg_url = make_conninfo(url, dbname=pg_name)
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg_name)))
    rounds: list[dict[str, float]] = []
    try:
        pgbench(pg_url, ["-i", "-q", "-s", str(clients)], timeout=300)
        for n in range(cfg.rounds):
            pairs = random_transfers(rng, accounts, cfg.settle_transfers)
            ids = insert_pending(conn, pairs, tag=f"bench-settle-{n}-{uuid.uuid4().hex[:6]}")
            started = time.monotonic()
            enqueue(ids)
            enqueue_rate = len(ids) / (time.monotonic() - started)
            booted = time.monotonic()
            worker = procs.start("worker")
            rss.watch("worker", worker.pid)
            wait_terminal(url, ids, timeout=300)
            wall = time.monotonic() - booted
            stop(worker)
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'settled'),"
                " extract(epoch FROM max(finished_at) - min(finished_at))"
                " FROM transfers WHERE id = ANY(%s)",
                (ids,),
            ).fetchone()
            assert row is not None
            settled, window = int(row[0]), float(row[1])
            rate = (len(ids) - 1) / window if window else float("nan")
            tps = pgbench(
                pg_url,
                ["-n", "-b", "tpcb-like", "-c", str(clients), "-j", "2"]
                + ["-T", str(max(1, round(cfg.pgbench_seconds)))],
                timeout=cfg.pgbench_seconds + 60,
            )
            rounds.append(
                {
                    "transfers_per_s": rate,
                    "settled": settled,
                    "enqueue_per_s": enqueue_rate,
                    "seconds_from_worker_start": wall,
                    "pgbench_tps": tps,
                    "ratio": ratio(rate, tps),
                }
            )
            print(
                f"  round {n + 1}: {rate:6.0f} transfers/s ({settled} of {len(ids)} settled),"
                f" pgbench {tps:6.0f} tps, enqueue {enqueue_rate:5.0f} ids/s from one thread"
            )
    finally:
        broker.close()
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg_name))
        )
    return {
        "transfers_per_round": cfg.settle_transfers,
        "accounts": len(accounts),
        "workers": f"{settings.worker_processes} processes x {settings.worker_threads} threads",
        "enqueued_with": "SettleBroker.send_batches",
        "pgbench": f"-b tpcb-like -c {clients} -j 2 -T {round(cfg.pgbench_seconds)} -s {clients}",
        "transfers_per_s": median([r["transfers_per_s"] for r in rounds]),
        "pgbench_tps": median([r["pgbench_tps"] for r in rounds]),
        "ratio_vs_pgbench": median([r["ratio"] for r in rounds]),
        "enqueue_per_s_one_thread": median([r["enqueue_per_s"] for r in rounds]),
        "rounds": rounds,
    }


def conninfo_dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


# 3. Intake and end-to-end --------------------------------------------------------------------


def intake(
    cfg: Config,
    port: int,
    headers: dict[str, str],
    url: str,
    conn: psycopg.Connection,
    accounts: range,
) -> dict:
    pairs = random_transfers(random.Random(3), accounts, int(cfg.intake_rate * cfg.intake_seconds))
    offered: Offered = offer_transfers(
        port,
        headers,
        lambda i: pairs[i],
        rate=cfg.intake_rate,
        seconds=cfg.intake_seconds,
    )
    wait_terminal(url, offered.accepted, timeout=120)
    row = conn.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d), count(*)"
        " FROM (SELECT extract(epoch FROM settled_at - created_at) * 1000 AS d"
        " FROM transfers WHERE id = ANY(%s) AND settled_at IS NOT NULL) AS s",
        (offered.accepted,),
    ).fetchone()
    assert row is not None
    lat = sorted(offered.latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    out = {
        "offered_per_s": cfg.intake_rate,
        "seconds": cfg.intake_seconds,
        "achieved_per_s": offered.achieved_rate,
        "late_sends": offered.late,
        "accepted_per_s": offered.accepted_rate,
        "accepted_vs_offered": ratio(offered.accepted_rate, cfg.intake_rate),
        "refused": {str(k): v for k, v in offered.refused.items()},
        "submit_p50_ms": pct(0.5),
        "submit_p99_ms": pct(0.99),
        "settle_p50_ms": float(row[0] or "nan"),
        "settle_p99_ms": float(row[1] or "nan"),
        "settle_max_ms": float(row[2] or "nan"),
        "settled": int(row[3]),
    }
    print(
        f"  offered {cfg.intake_rate:.0f}/s, achieved {offered.achieved_rate:.0f}/s"
        f" ({offered.late} late), accepted {offered.accepted_rate:.0f}/s, refused"
        f" {out['refused'] or 'none'},"
        f" submit p50 {out['submit_p50_ms']:.1f} p99 {out['submit_p99_ms']:.1f} ms,"
        f" accepted->settled p50 {out['settle_p50_ms']:.1f} p99 {out['settle_p99_ms']:.1f}"
        f" max {out['settle_max_ms']:.1f} ms"
    )
    return out


# 4. The cost of not pooling ------------------------------------------------------------------


def pooling(cfg: Config, url: str, users: range) -> dict:
    """The web's read, `SELECT id, email, name FROM users WHERE id = $1`, from pgbench's
    clients over connections kept open (a pool) and over a new connection per read (-C:
    connect, authenticate, read, disconnect), alternated."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(
            f"\\set id random({users[0]}, {users[-1]})\n"
            "SELECT id, email, name FROM users WHERE id = :id;\n"
        )
    base = ["-n", "-f", script.name, "-c", str(cfg.pool_clients), "-j", "2"]
    base += ["-T", str(max(1, round(cfg.pool_seconds)))]
    pooled: list[float] = []
    fresh: list[float] = []
    try:
        for _ in range(cfg.rounds):
            pooled.append(pgbench(url, base, timeout=cfg.pool_seconds + 60))
            fresh.append(pgbench(url, [*base, "-C"], timeout=cfg.pool_seconds + 60))
            print(f"  pooled {pooled[-1]:8.0f} reads/s   new connection each {fresh[-1]:7.0f}/s")
    finally:
        os.unlink(script.name)
    return {
        "clients": cfg.pool_clients,
        "pooled_reads_per_s": median(pooled),
        "new_connection_reads_per_s": median(fresh),
        "pooled_vs_new_connection": median(
            [ratio(p, f) for p, f in zip(pooled, fresh, strict=True)]
        ),
    }


# The run ------------------------------------------------------------------------------------


def machine(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT version(), current_setting('max_connections')").fetchone()
    assert row is not None
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "postgres": str(row[0]).split(" on ")[0],
        "max_connections": int(row[1]),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def run(cfg: Config) -> dict:
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "config": asdict(cfg),
    }
    started = time.monotonic()
    rss = RssSampler()
    with (
        bench_servers() as (url, name, redis_url),
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        rss,
    ):
        logs = Path(tmp)
        results["machine"] = machine(url)
        env = service_env(url, name, redis_url)
        port = int(env["PORT"])
        with psycopg.connect(url, autocommit=True) as conn:
            users, accounts = bulk_accounts(conn, cfg.accounts, balance=10_000_000)
            headers = operator_headers(conn)
            key = headers["Authorization"].removeprefix("Bearer ")
            procs = Processes(env, logs)
            try:
                web = procs.start("web")
                rss.watch("web", web.pid)
                wait_until(lambda: ready(port), timeout=60, what="settle web is ready")
                with express_peer(url, logs, rss) as peer:
                    print(f"1. reads: wrk -t2 -c32, {cfg.read_seconds:.0f} s per round")
                    results["reads"] = bench_reads.run_section(
                        web=(port, web.pid),
                        peer=peer,
                        users=users,
                        accounts=accounts,
                        key=key,
                        rounds=cfg.rounds,
                        seconds=cfg.read_seconds,
                        web_processes_count=Settings.from_env(env).web_processes,
                    )
                print(f"2. settlement: {cfg.settle_transfers} pending among {len(accounts)}")
                results["settlement"] = settlement(cfg, env, procs, rss, url, conn, accounts)
                print(f"3. intake: POST /transfers at {cfg.intake_rate:.0f}/s")
                worker = procs.start("worker")
                rss.watch("worker", worker.pid)
                sweeper = procs.start("sweeper")
                rss.watch("sweeper", sweeper.pid)
                processes = Settings.from_env(env).worker_processes
                wait_until(
                    lambda: worker_ready(procs, worker, processes),
                    timeout=60,
                    what="settle worker is ready",
                )
                results["intake"] = intake(cfg, port, headers, url, conn, accounts)
                print(
                    f"3b. saturation: POST /transfers flat out, wrk -t2 -c32 for"
                    f" {cfg.saturation_seconds:.0f} s, beside pgbench tpcb-like -c 8"
                )
                results["saturation"] = bench_saturation.run_section(
                    port=port,
                    key=key,
                    url=url,
                    conn=conn,
                    accounts=accounts,
                    seconds=cfg.saturation_seconds,
                    rounds=cfg.rounds,
                    pgbench_seconds=cfg.pgbench_seconds,
                    pids={"web": web.pid, "worker": worker.pid},
                )
                print(
                    f"3c. batches: POST /transfers/batch of 1,000 flat out,"
                    f" {bench_batches.CLIENTS} clients for {cfg.saturation_seconds:.0f} s,"
                    " beside pgbench tpcb-like -c 8"
                )
                results["batches"] = bench_batches.run_section(
                    port=port,
                    key=key,
                    url=url,
                    conn=conn,
                    accounts=accounts,
                    seconds=cfg.saturation_seconds,
                    rounds=cfg.rounds,
                    pgbench_seconds=cfg.pgbench_seconds,
                    pids={"web": web.pid, "worker": worker.pid},
                )
                print(
                    f"3d. webhooks: accepted -> settled at {cfg.intake_rate:.0f}/s for"
                    f" {cfg.webhook_seconds:.0f} s with failing receivers subscribed, beside none"
                )
                with bench_webhooks.queue_backlog(env) as backlog:
                    results["webhooks"] = bench_webhooks.run_section(
                        port=port,
                        key=key,
                        url=url,
                        conn=conn,
                        accounts=accounts,
                        rate=cfg.intake_rate,
                        seconds=cfg.webhook_seconds,
                        rounds=cfg.rounds,
                        webhook_backlog=backlog,
                    )
            finally:
                results["exit_codes"] = procs.stop_all()
            audit = subprocess.run(
                [str(SETTLE), "audit"], env=env, capture_output=True, text=True, timeout=300
            )
            results["audit"] = {"exit_code": audit.returncode, "report": audit.stdout.strip()}
            print(f"   settle audit: exit {audit.returncode}")
            print(f"4. the cost of not pooling: pgbench -c {cfg.pool_clients}, with and without -C")
            results["pooling"] = pooling(cfg, url, users)
        print(
            f"5. listing: GET /transfers on {cfg.listing_transfers:,} transfers, beside"
            " GET /transfers/{id}"
        )
        results["listing"] = bench_listing.run_section(
            server_url=url,
            service_env=lambda db, label: service_env(db, f"{name}-{label}", redis_url),
            logs=logs,
            rss=rss,
            transfers=cfg.listing_transfers,
            seconds=cfg.listing_seconds,
            rounds=cfg.rounds,
        )
        print("7. the rate-limit check: GET /users/{id} with a checked key and an unchecked one")
        results["ratelimit"] = bench_ratelimit.run_section(
            url=url,
            service_env=lambda db, label: service_env(db, f"{name}-{label}", redis_url),
            logs=logs,
            rss=None,
            seconds=cfg.read_seconds,
            rounds=cfg.rounds,
        )
    results["memory"] = rss.by_role()
    print(f"6. connection budget: python -m bench.connections ({cfg.budget_transfers} transfers)")
    m = connections.measure(transfers=cfg.budget_transfers)
    results["connections"] = {**asdict(m), "over": m.over}
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def table(r: dict) -> str:
    """The figures as a Markdown table (printed, and pasted into bench/README.md)."""
    st, it, pl = r["settlement"], r["intake"], r["pooling"]
    refused = (
        ", ".join(
            f"{n} x {status if status != '0' else 'no answer'}"
            for status, n in sorted(it["refused"].items())
        )
        or "none"
    )
    rows: list[tuple[str, ...]] = [("figure", "Settle", "baseline", "ratio", "goal")]
    rows.extend(bench_reads.rows(r["reads"]))
    rows.append(
        (
            f"settlement, {st['transfers_per_round']} pending among {st['accounts']} accounts,"
            f" {st['workers']}",
            f"{st['transfers_per_s']:.0f} transfers/s",
            f"pgbench {st['pgbench']}: {st['pgbench_tps']:.0f} tps",
            f"{st['ratio_vs_pgbench']:.2f}x",
            ">= 0.8x",
        )
    )
    rows.append(
        (
            f"enqueue from one thread ({st['enqueued_with']})",
            f"{st['enqueue_per_s_one_thread']:.0f} ids/s",
            "",
            "",
            "not the bottleneck",
        )
    )
    rows.append(
        (
            f"intake: POST /transfers offered {it['offered_per_s']:.0f}/s for"
            f" {it['seconds']:.0f} s (achieved {it['achieved_per_s']:.0f}/s)",
            f"{it['accepted_per_s']:.0f} accepted/s, submit p50 {it['submit_p50_ms']:.1f} /"
            f" p99 {it['submit_p99_ms']:.1f} ms; refused: {refused}",
            "the offered rate",
            f"{it['accepted_vs_offered']:.2f}x",
            "1.0x",
        )
    )
    rows.append(
        (
            "accepted -> settled (created_at -> settled_at)",
            f"p50 {it['settle_p50_ms']:.0f} / p99 {it['settle_p99_ms']:.0f} /"
            f" max {it['settle_max_ms']:.0f} ms",
            "",
            "",
            "p99 <= 50 ms",
        )
    )
    rows.extend(bench_saturation.rows(r["saturation"]))
    if "batches" in r:
        rows.extend(bench_batches.rows(r["batches"]))
    if "webhooks" in r:
        rows.extend(bench_webhooks.rows(r["webhooks"]))
    rows.extend(bench_listing.rows(r["listing"]))
    rows.extend(bench_ratelimit.rows(r["ratelimit"]))
    rows.append(
        (
            f"the same read, pooled vs a new connection each (pgbench -c {pl['clients']})",
            f"{pl['pooled_reads_per_s']:.0f} reads/s pooled",
            f"{pl['new_connection_reads_per_s']:.0f} reads/s with -C",
            f"{pl['pooled_vs_new_connection']:.1f}x",
            "",
        )
    )
    for role in ("web", "worker", "sweeper", "express"):
        procs = r["memory"].get(role, [])
        if procs:
            each = [float(p["peak_rss_mb"]) for p in procs]
            rows.append(
                (
                    f"peak RSS per process, {role}",
                    f"max {max(each):.0f} MB, median {median(each):.0f} MB"
                    f" ({len(each)} process{'es' if len(each) != 1 else ''})",
                    "",
                    "",
                    "<= 80 MB" if role != "express" else "",
                )
            )
    c = r["connections"]
    for role, planned in c["plan"].items():
        rows.append(
            (
                f"connections, {role} (budget {c['budget']})",
                f"peak {c['peak'][role]}",
                f"plan {planned}",
                "",
                "peak <= plan",
            )
        )
    rows.append(
        (
            f"connections, total ({c['transfers']} transfers)",
            f"peak {c['peak_total']}",
            f"plan {c['plan_total']}",
            "",
            f"<= {c['budget']}",
        )
    )
    rows.append(("settle audit after the run", f"exit {r['audit']['exit_code']}", "", "", "0"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("---" for _ in rows[0]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke pass")
    parser.add_argument("--rate", type=float, help="offered POST /transfers per second")
    parser.add_argument("--intake-seconds", type=float, help="how long intake is offered")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    cfg = Config.make(quick=quick, rate=args.rate, intake_seconds=args.intake_seconds)
    results = run(cfg)
    results["table"] = table(results)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print()
    print(
        f"{results['date']}, {m['cores']} cores ({m['cpu']}), {m['postgres']},"
        f" {results['seconds']:.0f} s{' (quick)' if quick else ''}, load average"
        f" {m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end"
    )
    print(results["table"])
    print(f"written to {args.out}")
    if results["audit"]["exit_code"] != 0:
        print(results["audit"]["report"], file=sys.stderr)
        raise SystemExit("bench: settle audit failed after the run")
    if results["connections"]["over"]:
        raise SystemExit("bench: a role held more connections than the plan gives it")


if __name__ == "__main__":
    main()
