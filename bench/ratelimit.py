"""What the per-key rate limit costs a request: authenticated GET /users/{id} with a key
far from its limit (a rate and burst of 1,000,000 of its own: checked, never refused, mostly
answered from the local allowance, see `shared.ratelimit.buckets.RedisBuckets`), with a key
whose every request is a round trip to Redis (burst 4: never an allowance), and with a key
not checked at all (RATE_LIMIT_PER_SECOND=0 and no rate of its own), on one `settle web`
(the default 2 processes x 8 threads) with its buckets in Redis, wrk -t2 -c32, the keys
alternated A B C A B C, medians quoted.

    .venv/bin/python -m bench.ratelimit [--seconds 8] [--rounds 3]
    # as `make bench` runs its sections: flock /tmp/settle-heavy.lock <the command>

The ratio is checked throughput / unchecked throughput (1.0: free), and the CPU the web
processes spend per request on each side; beside them, the check alone from one thread
against a bare Redis PING on the same client (what one round trip costs). A check is at most
one Redis round trip (EVALSHA) on a pooled connection of the process's own
(`shared.ratelimit.buckets`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import Processes, bench_servers, bulk_accounts, ready, wait_until
from bench.load import Wrk, wrk
from bench.memory import RssSampler, cpu_seconds
from shared.ledger import auth
from shared.ratelimit.buckets import RedisBuckets, redis_client
from shared.ratelimit.limits import MAX_BURST, MAX_RATE, Limit

USERS = 1000
UNCHECKED = "unchecked (no limit)"
CHECKED = "checked, far from its limit"
#: A burst of 4 at a million a second: never refused, and never more than 3 left, so no
#: local allowance (r // (2 x 2 processes) is 0): every request is a round trip to Redis.
EVERY = "checked, a round trip every request"


def run_section(
    *,
    url: str,
    service_env: Callable[[str, str], dict[str, str]],
    logs: Path,
    rss: RssSampler | None,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """Make users and the two keys in the database at `url`, start `settle web` on it with
    `service_env(url, "ratelimit")` (RATE_LIMIT_PER_SECOND set to 0), and wrk both keys in
    turn."""
    with psycopg.connect(url, autocommit=True) as conn:
        users, _ = bulk_accounts(conn, USERS, balance=1000)
        unchecked = auth.create_key(conn, user_id=None, label="bench-unchecked").key
        checked = auth.create_key(
            conn, user_id=None, label="bench-checked", rate=MAX_RATE, burst=MAX_BURST
        ).key
        every = auth.create_key(conn, user_id=None, label="bench-every", rate=MAX_RATE, burst=4).key
    env = {**service_env(url, "ratelimit"), "RATE_LIMIT_PER_SECOND": "0"}
    port = int(env["PORT"])
    procs = Processes(env, logs)
    keys = {UNCHECKED: unchecked, CHECKED: checked, EVERY: every}
    runs: dict[str, list[Wrk]] = {label: [] for label in keys}
    cpu_ms: dict[str, list[float]] = {label: [] for label in keys}
    try:
        web = procs.start("web")
        if rss is not None:
            rss.watch("web", web.pid)
        wait_until(lambda: ready(port), timeout=60, what="settle web (ratelimit) is ready")
        for key in keys.values():  # warm-up: pools filled, the script loaded; not counted
            wrk(port, "/users/", (users[0], users[-1]), key, 1)
        for _ in range(rounds):
            for label, key in keys.items():
                before = cpu_seconds(web.pid)
                w = wrk(port, "/users/", (users[0], users[-1]), key, seconds)
                runs[label].append(w)
                cpu_ms[label].append((cpu_seconds(web.pid) - before) * 1000 / max(1, w.requests))
                print(
                    f"  {label:34} {w.rps:7.0f} req/s  p50 {w.p50_ms:6.1f} ms"
                    f"  p99 {w.p99_ms:6.1f} ms  {cpu_ms[label][-1]:5.2f} CPU ms/request"
                )
    finally:
        procs.stop_all()
    out: dict[str, Any] = {"wrk": "-t2 -c32", "seconds_per_round": seconds, "rounds": rounds}
    for label, done in runs.items():
        out[label] = {
            "rps": statistics.median(w.rps for w in done),
            "p50_ms": statistics.median(w.p50_ms for w in done),
            "p99_ms": statistics.median(w.p99_ms for w in done),
            "non_2xx": sum(w.non_2xx for w in done),
            "app_cpu_ms_per_request": statistics.median(cpu_ms[label]),
        }
    out["round_trip"] = round_trips(env["REDIS_URL"], f"{env['BROKER_NAMESPACE']}-trips")
    for label, name in ((CHECKED, ""), (EVERY, "every_")):
        pairs = list(zip(runs[label], runs[UNCHECKED], strict=True))
        out[f"{name}rps_ratio"] = statistics.median(c.rps / u.rps for c, u in pairs)
        out[f"{name}cpu_ratio"] = statistics.median(
            c / u for c, u in zip(cpu_ms[label], cpu_ms[UNCHECKED], strict=True)
        )
    return out


def round_trips(redis_url: str, namespace: str, *, count: int = 5000) -> dict[str, float]:
    """Microseconds per check (`RedisBuckets.take`, the script by EVALSHA) beside a bare PING
    on the same client, from one thread, alternated in blocks of 500, medians of the blocks."""
    buckets = RedisBuckets(redis_client(redis_url), namespace)
    client = redis_client(redis_url)
    limit = Limit(MAX_RATE, 4, "key")  # never an allowance: each call is a round trip
    checks: list[float] = []
    pings: list[float] = []
    try:
        buckets.take(0, limit)  # the script loaded; connections made
        client.ping()
        for block in range(count // 500):
            started = time.perf_counter()
            for _ in range(500):
                buckets.take(block, limit)
            checks.append((time.perf_counter() - started) * 1e6 / 500)
            started = time.perf_counter()
            for _ in range(500):
                client.ping()
            pings.append((time.perf_counter() - started) * 1e6 / 500)
    finally:
        buckets.close()
        client.close()
    check, ping = statistics.median(checks), statistics.median(pings)
    return {"check_us": check, "ping_us": ping, "check_vs_ping": check / ping}


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    checked, unchecked, every = result[CHECKED], result[UNCHECKED], result[EVERY]
    trips = result["round_trip"]
    return [
        (
            "the rate-limit check alone, one thread (us per call)",
            f"{trips['check_us']:.0f}",
            f"{trips['ping_us']:.0f} for a Redis PING",
            f"{trips['check_vs_ping']:.2f}x",
            "",
        ),
        (
            "GET /users/{id} with the rate-limit check (req/s)",
            f"{checked['rps']:.0f}",
            f"{unchecked['rps']:.0f} without",
            f"{result['rps_ratio']:.2f}x",
            "",
        ),
        (
            "  web CPU per request with the check (ms)",
            f"{checked['app_cpu_ms_per_request']:.2f}",
            f"{unchecked['app_cpu_ms_per_request']:.2f} without",
            f"{result['cpu_ratio']:.2f}x",
            "",
        ),
        (
            "GET /users/{id}, a key near its limit: a round trip every request (req/s)",
            f"{every['rps']:.0f}",
            f"{unchecked['rps']:.0f} without",
            f"{result['every_rps_ratio']:.2f}x",
            "",
        ),
        (
            "  web CPU per request, a round trip every request (ms)",
            f"{every['app_cpu_ms_per_request']:.2f}",
            f"{unchecked['app_cpu_ms_per_request']:.2f} without",
            f"{result['every_cpu_ratio']:.2f}x",
            "",
        ),
    ]


def main() -> None:
    from bench.harness import service_env

    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bench_servers() as (url, name, redis_url), tempfile.TemporaryDirectory() as tmp:
        result = run_section(
            url=url,
            service_env=lambda db, label: service_env(db, f"{name}-{label}", redis_url),
            logs=Path(tmp),
            rss=None,
            seconds=args.seconds,
            rounds=args.rounds,
        )
    print(json.dumps(result, indent=2))
    for row in rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
