"""The bench's reads section: a ladder of GET requests against `settle web`, each rung beside
the Express + pg peer's `GET /users/{id}` in the same run, so that each step's cost is a
ratio of its own; and how wrk's connections spread over the web processes.

    .venv/bin/python -m bench.reads [--rounds 3] [--seconds 8]   # this section alone

The rungs, each adding one thing to the one before:
1. `GET /healthz`: waitress, Falcon and every middleware; no key, no database.
2. `GET /bench/key`: the API key checked (`RequireApiKey`), nothing else.
3. `GET /bench/select-1`: the key, then a pooled connection and `SELECT 1`.
4. `GET /users/{id}`: the full read, the user's row read and rendered (the goal's figure).
Then `GET /accounts/{id}`, the other read the peer is held to. Rungs 2 and 3 exist only when
`settle web` runs with BENCH_ROUTES=true (`web/ladder.py`), as here.

Each round runs the peer once and every rung once, in an order reversed every other round
(so that drift on a shared machine falls on both sides); each rung's ratio is against the
peer's run of the same round, and the median over the rounds is quoted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.load import Wrk, wrk
from bench.memory import cpu_seconds

PEER = "express GET /users/{id}"
FULL_READ = "GET /users/{id}"


@dataclass(frozen=True)
class Rung:
    label: str
    path: str  # with `ids`, a random id in them is appended
    ids: tuple[int, int] | None
    keyed: bool
    adds: str


def rungs(users: range, accounts: range) -> list[Rung]:
    return [
        Rung("GET /healthz", "/healthz", None, False, "waitress, Falcon, the middleware"),
        Rung("GET /bench/key", "/bench/key", None, True, "+ the API key checked"),
        Rung("GET /bench/select-1", "/bench/select-1", None, True, "+ pooled SELECT 1"),
        Rung(FULL_READ, "/users/", (users[0], users[-1]), True, "+ the row read and rendered"),
        Rung(
            "GET /accounts/{id}",
            "/accounts/",
            (accounts[0], accounts[-1]),
            True,
            "another full read",
        ),
    ]


def web_processes(supervisor: int) -> list[psutil.Process]:
    """The web processes under `settle web`'s supervisor `supervisor`."""
    return psutil.Process(supervisor).children(recursive=True)


def connections_by_process(supervisor: int, port: int) -> Counter[int]:
    """Established client connections on `port`, counted by the web process holding each."""
    held: Counter[int] = Counter()
    for proc in web_processes(supervisor):
        with contextlib.suppress(psutil.Error):
            held[proc.pid] += sum(
                1
                for c in proc.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            )
    return held


@contextlib.contextmanager
def spread_sampler(supervisor: int, port: int) -> Iterator[list[Counter[int]]]:
    """Samples of `connections_by_process` every half second while the body runs."""
    samples: list[Counter[int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(connections_by_process(supervisor, port))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def shares(samples: list[Counter[int]], processes: int) -> list[float]:
    """Each web process's share of the connections, in the sample that saw the most of them
    (wrk keeps its connections open for the whole run); a process that held none counts 0."""
    if not samples:
        return []
    best = max(samples, key=lambda s: sum(s.values()))
    total = sum(best.values())
    counts = sorted(best.values()) + [0] * max(0, processes - len(best))
    return sorted(c / total for c in counts) if total else []


def _runner(port: int, rung: Rung, key: str) -> Callable[[float], Wrk]:
    return lambda seconds: wrk(port, rung.path, rung.ids, key if rung.keyed else None, seconds)


def run_section(
    *,
    web: tuple[int, int],
    peer: tuple[int, int],
    users: range,
    accounts: range,
    key: str,
    rounds: int,
    seconds: float,
    web_processes_count: int,
) -> dict[str, Any]:
    """wrk on the peer and each rung, `rounds` times; `web` and `peer` are (port, supervisor
    or process pid): the pid's process tree is charged the CPU time each run costs."""
    (web_port, web_pid), (peer_port, peer_pid) = web, peer
    ladder = rungs(users, accounts)
    targets: dict[str, tuple[int, Callable[[float], Wrk]]] = {
        PEER: (peer_pid, lambda s: wrk(peer_port, "/users/", (users[0], users[-1]), None, s))
    }
    for r in ladder:
        targets[r.label] = (web_pid, _runner(web_port, r, key))
    for label, (_, run) in targets.items():  # warm-up: pools filled, code paths hot
        if run(1).non_2xx:
            raise SystemExit(f"bench: {label} answered non-2xx (is BENCH_ROUTES set?)")
    runs: dict[str, list[Wrk]] = {label: [] for label in targets}
    cpu_ms: dict[str, list[float]] = {label: [] for label in targets}
    splits: list[list[float]] = []
    for n in range(rounds):
        order = list(targets) if n % 2 == 0 else list(reversed(targets))
        for label in order:
            pid, run = targets[label]
            before = cpu_seconds(pid)
            if label == FULL_READ:
                with spread_sampler(web_pid, web_port) as samples:
                    w = run(seconds)
                splits.append(shares(samples, web_processes_count))
            else:
                w = run(seconds)
            runs[label].append(w)
            cpu_ms[label].append((cpu_seconds(pid) - before) * 1000 / max(1, w.requests))
            print(
                f"  {label:28} {w.rps:8.0f} req/s  p50 {w.p50_ms:6.1f} ms  p99 {w.p99_ms:6.1f} ms"
                f"  {cpu_ms[label][-1]:5.3f} CPU ms/request",
                flush=True,
            )
        if splits:
            print(f"  connections per web process: {[round(s, 2) for s in splits[-1]]}")
    peer_runs = runs[PEER]
    out: dict[str, Any] = {
        "wrk": "-t2 -c32",
        "seconds_per_round": seconds,
        "rounds": rounds,
        "rungs": {r.label: r.adds for r in ladder},
        "connection_shares": splits,
        "web_processes": web_processes_count,
    }
    for label, done in runs.items():
        # Each round's ratio against the peer of the same round, listed in run order.
        by_round = [
            w.rps / p.rps if p.rps else float("nan") for w, p in zip(done, peer_runs, strict=True)
        ]
        out[label] = {
            "rps": statistics.median(w.rps for w in done),
            "p50_ms": statistics.median(w.p50_ms for w in done),
            "p99_ms": statistics.median(w.p99_ms for w in done),
            "requests": sum(w.requests for w in done),
            "non_2xx": sum(w.non_2xx for w in done),
            "socket_errors": sum(w.socket_errors for w in done),
            "app_cpu_ms_per_request": statistics.median(cpu_ms[label]),
            "ratio_vs_express_by_round": by_round,
            "ratio_vs_express": statistics.median(by_round),
            # CPU time per request over the peer's in the same round (below 1: less).
            "cpu_per_request_vs_express": statistics.median(
                c / p if p else float("nan")
                for c, p in zip(cpu_ms[label], cpu_ms[PEER], strict=True)
            ),
        }
    return out


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    ex = result[PEER]
    baseline = (
        f"Express + pg (no auth) {ex['rps']:.0f} req/s, p50 {ex['p50_ms']:.1f} /"
        f" p99 {ex['p99_ms']:.1f} ms, {ex['app_cpu_ms_per_request']:.2f} CPU ms/req"
    )
    found: list[tuple[str, ...]] = []
    for label, adds in result["rungs"].items():
        s = result[label]
        found.append(
            (
                f"read ladder: {label} ({adds}), {'no key' if label == 'GET /healthz' else 'a key'}"
                " (wrk -t2 -c32)",
                f"{s['rps']:.0f} req/s, p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} ms,"
                f" {s['non_2xx']} non-2xx, {s['app_cpu_ms_per_request']:.2f} CPU ms/req",
                baseline,
                f"{s['ratio_vs_express']:.2f}x req/s; CPU per request"
                f" {s['cpu_per_request_vs_express']:.2f}x",
                ">= 1.0x req/s" if label == FULL_READ else "",
            )
        )
    splits = result["connection_shares"]
    if splits:
        worst = min(min(s) for s in splits if s) if any(splits) else 0.0
        found.append(
            (
                f"wrk's 32 connections per web process ({result['web_processes']} processes),"
                " each round",
                ", ".join("/".join(f"{x:.0%}" for x in s) for s in splits),
                "an even split",
                f"smallest share {worst:.0%}",
                "each 35%-65%",
            )
        )
    return found


def main() -> None:
    """This section alone: scratch servers, `settle web` with BENCH_ROUTES=true, the peer."""
    from bench.harness import (
        Processes,
        bench_servers,
        bulk_accounts,
        express_peer,
        operator_headers,
        ready,
        service_env,
        wait_until,
    )
    from bench.memory import RssSampler
    from shared.config import Settings

    parser = argparse.ArgumentParser(prog="bench.reads", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    with (
        bench_servers() as (url, name, redis_url),
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        RssSampler() as rss,
    ):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            users, accounts = bulk_accounts(conn, 2000, balance=1000)
            key = operator_headers(conn)["Authorization"].removeprefix("Bearer ")
        env = {**service_env(url, name, redis_url), "BENCH_ROUTES": "true"}
        port = int(env["PORT"])
        procs = Processes(env, Path(tmp))
        try:
            web = procs.start("web")
            wait_until(lambda: ready(port), timeout=60, what="settle web is ready")
            with express_peer(url, Path(tmp), rss) as peer:
                result = run_section(
                    web=(port, web.pid),
                    peer=peer,
                    users=users,
                    accounts=accounts,
                    key=key,
                    rounds=args.rounds,
                    seconds=args.seconds,
                    web_processes_count=Settings.from_env(env).web_processes,
                )
        finally:
            procs.stop_all()
    for row in rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
