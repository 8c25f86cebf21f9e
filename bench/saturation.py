"""The bench's saturation section: POST /transfers flat out, and whether settlement keeps up.

wrk in a closed loop (-t2, 32 connections, each sending its next transfer as soon as the last
is answered, for 15 s) against `settle web`, `settle worker` and `settle sweeper` running with
the default settings (`make run`'s process counts), among 2,000 funded accounts. From the
database (each transfer's `created_at` and `settled_at`, the start of the transaction that
accepted it and of the one that settled it): accepted/s over the burst (the first to the last
acceptance), the transfers settled within that same window per second, accepted -> settled
p50/p99/max, and how long after the last acceptance the last settlement came. The baseline,
pgbench tpcb-like at 8 clients on the same server (one transfer per transaction, as Postgres
alone does it), runs after each burst once its backlog is settled: rounds alternate burst,
pgbench, burst, pgbench, and medians are quoted. Also the CPU time web's and the worker's
process trees spent per accepted transfer.

    .venv/bin/python -m bench.saturation [--seconds 15] [--rounds 3]   # this section alone

`make bench` runs it after section 3 with the same processes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.load import pgbench, wrk_transfers
from bench.memory import cpu_seconds

CONNECTIONS = 32
PGBENCH_CLIENTS = 8

_FIGURES = """
WITH b AS (SELECT * FROM transfers WHERE id > %(after)s),
     w AS (SELECT min(created_at) AS first, max(created_at) AS last FROM b)
SELECT count(*),
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'failed'),
       extract(epoch FROM (SELECT last - first FROM w)),
       count(*) FILTER (WHERE settled_at <= (SELECT last FROM w)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)),
       max(extract(epoch FROM settled_at - created_at)),
       extract(epoch FROM max(finished_at) - (SELECT last FROM w))
  FROM b
"""


def _last_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM transfers").fetchone()
    assert row is not None
    return int(row[0])


def _wait_settled(conn: psycopg.Connection, after: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "SELECT count(*) FROM transfers WHERE id > %s AND status = 'pending'", (after,)
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {row and row[0]} transfers still pending after {timeout} s")
        time.sleep(0.2)


def burst(
    *,
    port: int,
    key: str,
    conn: psycopg.Connection,
    accounts: range,
    seconds: float,
    pids: dict[str, int],
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """One closed-loop burst and its settlement, waited for; its figures."""
    after = _last_id(conn)
    cpu = {role: cpu_seconds(pid) for role, pid in pids.items()}
    w = wrk_transfers(
        port, (accounts[0], accounts[-1]), key, f"sat-{uuid.uuid4().hex[:8]}", seconds, connections
    )
    cpu = {role: cpu_seconds(pid) - cpu[role] for role, pid in pids.items()}
    _wait_settled(conn, after, timeout=300)
    row = conn.execute(_FIGURES, {"after": after}).fetchone()
    assert row is not None
    accepted, pending, failed, window = int(row[0]), int(row[1]), int(row[2]), float(row[3] or 0)
    in_window = int(row[4])
    refused = {str(s): n for s, n in sorted(w.statuses.items()) if s != 202}
    if w.socket_errors:
        refused["no answer"] = w.socket_errors
    accepted_rate = accepted / window if window else float("nan")
    settled_rate = in_window / window if window else float("nan")
    return {
        "accepted": accepted,
        "answered_202": w.statuses.get(202, 0),
        "refused": refused,
        "failed": failed,
        "pending_after_wait": pending,
        "window_s": window,
        "accepted_per_s": accepted_rate,
        "settled_in_window": in_window,
        "settled_per_s": settled_rate,
        "settled_vs_accepted": in_window / accepted if accepted else float("nan"),
        "submit_p50_ms": w.p50_ms,
        "submit_p99_ms": w.p99_ms,
        "settle_p50_ms": float(row[5] or "nan") * 1000,
        "settle_p99_ms": float(row[6] or "nan") * 1000,
        "settle_max_ms": float(row[7] or "nan") * 1000,
        "last_settled_after_last_accepted_s": float(row[8] or "nan"),
        "cpu_ms_per_transfer": {
            role: used * 1000 / accepted if accepted else float("nan") for role, used in cpu.items()
        },
    }


@contextlib.contextmanager
def pgbench_database(conn: psycopg.Connection, url: str, clients: int) -> Iterator[str]:
    """A pgbench database next to `url`'s (scale = clients), initialised; dropped on exit."""
    name = f"{conninfo_to_dict(url)['dbname']}_pgbench_sat"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        pg_url = make_conninfo(url, dbname=name)
        pgbench(pg_url, ["-i", "-q", "-s", str(clients)], timeout=300)
        yield pg_url
    finally:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def run_section(
    *,
    port: int,
    key: str,
    url: str,
    conn: psycopg.Connection,
    accounts: range,
    seconds: float,
    rounds: int,
    pgbench_seconds: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """`rounds` bursts of `seconds` against the running processes (`pids`: role -> pid, for
    their CPU time), each followed by pgbench tpcb-like at 8 clients; medians."""
    runs: list[dict[str, Any]] = []
    pgbench_args = ["-n", "-b", "tpcb-like", "-c", str(PGBENCH_CLIENTS), "-j", "2"]
    pgbench_args += ["-T", str(max(1, round(pgbench_seconds)))]
    with pgbench_database(conn, url, PGBENCH_CLIENTS) as pg_url:
        for n in range(rounds):
            b = burst(port=port, key=key, conn=conn, accounts=accounts, seconds=seconds, pids=pids)
            b["pgbench_tps"] = pgbench(pg_url, pgbench_args, timeout=pgbench_seconds + 60)
            b["accepted_vs_pgbench"] = b["accepted_per_s"] / b["pgbench_tps"]
            runs.append(b)
            cpu = ", ".join(f"{r} {v:.2f}" for r, v in b["cpu_ms_per_transfer"].items())
            print(
                f"  round {n + 1}: accepted {b['accepted_per_s']:5.0f}/s"
                f" (refused {b['refused'] or 'none'}), settled during the burst"
                f" {b['settled_per_s']:5.0f}/s ({b['settled_vs_accepted']:.2f}x),"
                f" accepted->settled p50 {b['settle_p50_ms']:.0f} p99 {b['settle_p99_ms']:.0f}"
                f" max {b['settle_max_ms']:.0f} ms, last settlement"
                f" {b['last_settled_after_last_accepted_s']:.2f} s after the last POST;"
                f" pgbench {b['pgbench_tps']:.0f} tps ({b['accepted_vs_pgbench']:.2f}x);"
                f" CPU ms/transfer {cpu}",
                flush=True,
            )

    def med(name: str) -> float:
        return float(statistics.median(r[name] for r in runs))

    return {
        "wrk": f"-t2 -c{CONNECTIONS}, closed loop, POST /transfers",
        "seconds": seconds,
        "accounts": len(accounts),
        "pgbench": f"-b tpcb-like -c {PGBENCH_CLIENTS} -j 2 -T {round(pgbench_seconds)}"
        f" -s {PGBENCH_CLIENTS}",
        **{
            name: med(name)
            for name in (
                "accepted_per_s",
                "settled_per_s",
                "settled_vs_accepted",
                "pgbench_tps",
                "accepted_vs_pgbench",
                "submit_p50_ms",
                "submit_p99_ms",
                "settle_p50_ms",
                "settle_p99_ms",
                "settle_max_ms",
                "last_settled_after_last_accepted_s",
            )
        },
        "refused": sum(sum(r["refused"].values()) for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "rounds": runs,
    }


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    cpu = "; ".join(
        f"{role} {statistics.median(x['cpu_ms_per_transfer'][role] for x in r['rounds']):.2f}"
        for role in r["rounds"][0]["cpu_ms_per_transfer"]
    )
    return [
        (
            f"POST /transfers at saturation (wrk -t2 -c{CONNECTIONS}, closed loop,"
            f" {r['seconds']:.0f} s), accepted/s",
            f"{r['accepted_per_s']:.0f} accepted/s, submit p50 {r['submit_p50_ms']:.1f} /"
            f" p99 {r['submit_p99_ms']:.1f} ms; refused {r['refused']}; CPU ms per transfer: {cpu}",
            f"pgbench {r['pgbench']}: {r['pgbench_tps']:.0f} tps",
            f"{r['accepted_vs_pgbench']:.2f}x",
            ">= 0.5x",
        ),
        (
            "the same bursts: settled/s during the burst vs accepted/s",
            f"{r['settled_per_s']:.0f} settled/s",
            f"{r['accepted_per_s']:.0f} accepted/s",
            f"{r['settled_vs_accepted']:.2f}x",
            ">= 0.95x",
        ),
        (
            "the same bursts: accepted -> settled (created_at -> settled_at)",
            f"p50 {r['settle_p50_ms']:.0f} / p99 {r['settle_p99_ms']:.0f} /"
            f" max {r['settle_max_ms']:.0f} ms; last settlement"
            f" {r['last_settled_after_last_accepted_s']:.2f} s after the last POST",
            "",
            "",
            "p99 <= 250 ms",
        ),
    ]


def main() -> None:
    from bench.harness import standalone_service

    parser = argparse.ArgumentParser(prog="python -m bench.saturation", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pgbench-seconds", type=float, default=8.0)
    args = parser.parse_args()
    with standalone_service() as service:
        result = run_section(
            port=service.port,
            key=service.key,
            url=service.url,
            conn=service.conn,
            accounts=service.accounts,
            seconds=args.seconds,
            rounds=args.rounds,
            pgbench_seconds=args.pgbench_seconds,
            pids={"web": service.web.pid, "worker": service.worker.pid},
        )
    for row in rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
