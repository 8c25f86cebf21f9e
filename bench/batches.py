"""The bench's batch section: POST /transfers/batch (1,000 transfers per request) flat out,
and what settles, beside pgbench tpcb-like.

`CLIENTS` threads in a closed loop, each posting its next batch of 1,000 transfers (between
random accounts among 2,000, each with its own idempotency key) as soon as the last is
answered (or, turned away by admission control with 503, sends it again after Retry-After),
for 15 s, against `settle web`, `settle worker` and `settle sweeper` running with
the default settings. The bodies are made before the burst, so the client spends its time
sending. From the database (each transfer's `created_at` and `settled_at`): accepted/s over
the burst (first to last acceptance) and settled/s from the first acceptance to the last
settlement, the backlog drained included, which is the figure the goal names; also what
settled within the burst itself, and accepted -> settled p50/p99. The baseline, pgbench
tpcb-like at 8 clients on the same server (one transfer per transaction), runs after each
burst once its backlog is settled: burst, pgbench, burst, pgbench, medians quoted.

    .venv/bin/python -m bench.batches [--seconds 15] [--rounds 3]   # this section alone

`make bench` runs it after section 3b with the same processes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time
import uuid
from typing import Any

import psycopg

from bench.load import pgbench
from bench.memory import cpu_seconds
from bench.saturation import PGBENCH_CLIENTS, _last_id, _wait_settled, pgbench_database

#: Transfers per request, and client threads posting them.
BATCH = 1000
CLIENTS = 4

_FIGURES = """
WITH b AS (SELECT * FROM transfers WHERE id > %(after)s),
     w AS (SELECT min(created_at) AS first, max(created_at) AS last,
                  max(settled_at) AS drained FROM b)
SELECT count(*),
       count(*) FILTER (WHERE status = 'settled'),
       count(*) FILTER (WHERE status = 'failed'),
       extract(epoch FROM (SELECT last - first FROM w)),
       extract(epoch FROM (SELECT drained - first FROM w)),
       count(*) FILTER (WHERE settled_at <= (SELECT last FROM w)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at))
  FROM b
"""


def bodies(accounts: range, count: int, rng: random.Random) -> list[bytes]:
    """`count` batch bodies of `BATCH` transfers of 1 to 100 cents between random accounts,
    each transfer with a key of its own."""
    tag = uuid.uuid4().hex[:8]
    made: list[bytes] = []
    for n in range(count):
        items = []
        for i in range(BATCH):
            source, target = rng.sample(accounts, 2)
            items.append(
                {
                    "from_account_id": source,
                    "to_account_id": target,
                    "amount": rng.randint(1, 100),
                    "idempotency_key": f"b-{tag}-{n}-{i}",
                }
            )
        made.append(json.dumps({"transfers": items}).encode())
    return made


def post_all(port: int, key: str, ready: list[bytes], seconds: float) -> dict[str, Any]:
    """Post `ready` bodies from `CLIENTS` threads in a closed loop until `seconds` have passed
    (or the bodies run out), each turned away with 503 sent again after its Retry-After;
    {status: requests} and each request's seconds."""
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if not ready:
                        return
                    body = ready.pop()
                status = 503
                # A batch turned away (admission control) is sent again after Retry-After,
                # as a client would: the same body, so nothing is recorded twice.
                while status == 503 and time.monotonic() < deadline:
                    started = time.monotonic()
                    conn.request("POST", "/transfers/batch", body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    with lock:
                        latencies.append(time.monotonic() - started)
                        statuses[status] = statuses.get(status, 0) + 1
                    if status == 503:
                        pause = float(resp.getheader("Retry-After") or 1)
                        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": statuses, "latencies": latencies, "ran_out": not ready}


def burst(
    *,
    port: int,
    key: str,
    conn: psycopg.Connection,
    accounts: range,
    seconds: float,
    pids: dict[str, int],
    rng: random.Random,
    expected_per_s: float = 25.0,
) -> dict[str, Any]:
    """One closed-loop burst of batches and its settlement, waited for; its figures."""
    ready = bodies(accounts, max(CLIENTS, round(seconds * expected_per_s)), rng)
    after = _last_id(conn)
    cpu = {role: cpu_seconds(pid) for role, pid in pids.items()}
    posted = post_all(port, key, ready, seconds)
    _wait_settled(conn, after, timeout=600)
    cpu = {role: cpu_seconds(pid) - cpu[role] for role, pid in pids.items()}
    row = conn.execute(_FIGURES, {"after": after}).fetchone()
    assert row is not None
    accepted, settled, failed = int(row[0]), int(row[1]), int(row[2])
    window, drained = float(row[3] or 0), float(row[4] or 0)
    latencies = sorted(posted["latencies"])
    return {
        "requests": posted["statuses"],
        "bodies_ran_out": posted["ran_out"],
        "accepted": accepted,
        "settled": settled,
        "failed": failed,
        "window_s": window,
        "drained_s": drained,
        "accepted_per_s": accepted / window if window else float("nan"),
        "settled_per_s": settled / drained if drained else float("nan"),
        "settled_in_burst_per_s": int(row[5]) / window if window else float("nan"),
        "request_p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "settle_p50_ms": float(row[6] or "nan") * 1000,
        "settle_p99_ms": float(row[7] or "nan") * 1000,
        "cpu_ms_per_transfer": {
            role: used * 1000 / accepted if accepted else float("nan") for role, used in cpu.items()
        },
    }


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
    rng = random.Random(20261203)
    runs: list[dict[str, Any]] = []
    pgbench_args = ["-n", "-b", "tpcb-like", "-c", str(PGBENCH_CLIENTS), "-j", "2"]
    pgbench_args += ["-T", str(max(1, round(pgbench_seconds)))]
    with pgbench_database(conn, url, PGBENCH_CLIENTS) as pg_url:
        for n in range(rounds):
            b = burst(
                port=port,
                key=key,
                conn=conn,
                accounts=accounts,
                seconds=seconds,
                pids=pids,
                rng=rng,
            )
            b["pgbench_tps"] = pgbench(pg_url, pgbench_args, timeout=pgbench_seconds + 60)
            b["settled_vs_pgbench"] = b["settled_per_s"] / b["pgbench_tps"]
            runs.append(b)
            cpu = ", ".join(f"{r} {v:.3f}" for r, v in b["cpu_ms_per_transfer"].items())
            print(
                f"  round {n + 1}: {sum(b['requests'].values())} batches {b['requests']}"
                f"{' (ran out of bodies)' if b['bodies_ran_out'] else ''},"
                f" accepted {b['accepted_per_s']:5.0f}/s, settled {b['settled_per_s']:5.0f}/s"
                f" (first acceptance to last settlement, {b['drained_s']:.1f} s;"
                f" {b['settled_in_burst_per_s']:.0f}/s within the burst), request p50"
                f" {b['request_p50_ms']:.0f} ms, accepted->settled p50 {b['settle_p50_ms']:.0f}"
                f" p99 {b['settle_p99_ms']:.0f} ms; pgbench {b['pgbench_tps']:.0f} tps"
                f" ({b['settled_vs_pgbench']:.2f}x); CPU ms/transfer {cpu}",
                flush=True,
            )

    def med(name: str) -> float:
        return float(statistics.median(r[name] for r in runs))

    return {
        "client": f"{CLIENTS} threads, closed loop, POST /transfers/batch of {BATCH}",
        "seconds": seconds,
        "accounts": len(accounts),
        "pgbench": f"-b tpcb-like -c {PGBENCH_CLIENTS} -j 2 -T {round(pgbench_seconds)}"
        f" -s {PGBENCH_CLIENTS}",
        **{
            name: med(name)
            for name in (
                "accepted_per_s",
                "settled_per_s",
                "settled_in_burst_per_s",
                "pgbench_tps",
                "settled_vs_pgbench",
                "request_p50_ms",
                "settle_p50_ms",
                "settle_p99_ms",
            )
        },
        "failed": sum(r["failed"] for r in runs),
        "rounds": runs,
    }


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    cpu = "; ".join(
        f"{role} {statistics.median(x['cpu_ms_per_transfer'][role] for x in r['rounds']):.3f}"
        for role in r["rounds"][0]["cpu_ms_per_transfer"]
    )
    return [
        (
            f"POST /transfers/batch ({BATCH} per request, {CLIENTS} clients, closed loop,"
            f" {r['seconds']:.0f} s): settled/s, first acceptance to last settlement",
            f"{r['settled_per_s']:.0f} settled/s ({r['accepted_per_s']:.0f} accepted/s;"
            f" request p50 {r['request_p50_ms']:.0f} ms; accepted -> settled p99"
            f" {r['settle_p99_ms']:.0f} ms); CPU ms per transfer: {cpu}",
            f"pgbench {r['pgbench']}: {r['pgbench_tps']:.0f} tps",
            f"{r['settled_vs_pgbench']:.2f}x",
            ">= 2.0x",
        ),
    ]


def main() -> None:
    from bench.harness import standalone_service

    parser = argparse.ArgumentParser(prog="python -m bench.batches", description=__doc__)
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
