"""Two source trees side by side, alternated A B A B in one command, for a change's ratio.

    .venv/bin/python -m bench.ab reads  TREE_A TREE_B [--rounds 4] [--seconds 5]
    .venv/bin/python -m bench.ab intake TREE_A TREE_B [--rounds 2] [--rate 300] [--seconds 15]
    .venv/bin/python -m bench.ab settle TREE_A TREE_B [--rounds 4] [--transfers 10000]
    .venv/bin/python -m bench.ab saturation TREE_A TREE_B [--rounds 4] [--seconds 15]

Each tree is a checkout of Settle (a worktree of main for A, say); its code runs with this
environment's packages (PYTHONPATH=tree), so the trees must need the same dependencies.
`reads`: `settle web` of both trees on one scratch database, wrk -t2 -c32 on
GET /users/{id} (2,000 random ids, an operator key) in turn; req/s and the CPU time of each
web's process tree per request, and the B/A ratios with their median. `intake`: web, worker
and sweeper of one tree at a time, POST /transfers offered at `rate` for `seconds`, and
accepted -> settled (created_at -> settled_at) p50/p99 from the database. `settle`: each
tree on a database of its own, migrated by that tree's `settle migrate` (so a schema change
is measured too), `transfers` pending transfers queued before its `settle worker` starts;
transfers settled per second from the first to the last settlement (as `make bench`'s
settlement section counts them). `saturation`: web, worker and sweeper of one tree at a time
under `make bench`'s closed-loop burst (`bench.saturation`: wrk -c32 POSTing transfers as fast
as they are answered): accepted/s, settled/s during the burst against accepted/s, accepted ->
settled p99, the CPU time per transfer of web and worker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench import saturation as bench_saturation
from bench.harness import (
    SETTLE,
    bench_servers,
    bulk_accounts,
    insert_pending,
    operator_headers,
    random_transfers,
    ready,
    service_env,
    stop,
    wait_terminal,
    wait_until,
)
from bench.load import offer_transfers, wrk
from bench.memory import cpu_seconds


@contextmanager
def running(
    tree: str, roles: list[str], env: dict[str, str], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`settle <role>` for each of `roles`, from `tree`'s code; stopped on exit."""
    procs = []
    try:
        for role in roles:
            log = (logs / f"{Path(tree).name}-{role}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [str(SETTLE), role],
                    cwd=tree,
                    env={**env, "PYTHONPATH": tree},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield procs
    finally:
        # All at once (SIGTERM to each process group), then each waited for as `make bench`
        # does: SIGKILL to what is still running after its 60 s. Web drains for up to
        # WEB_SHUTDOWN_TIMEOUT (30 s) and then closes its server, so one slow stop must not
        # end the command and lose the rounds measured so far.
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            stop(proc)


def ratios(name: str, a: list[float], b: list[float]) -> None:
    each = [y / x for x, y in zip(a, b, strict=True)]
    print(f"{name}: B/A {[round(r, 3) for r in each]}, median {statistics.median(each):.3f}")


def reads(trees: tuple[str, str], rounds: int, seconds: float) -> None:
    with bench_servers() as (url, name, redis_url), tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(url, autocommit=True) as conn:
            users, _ = bulk_accounts(conn, 2000, balance=1000)
            key = operator_headers(conn)["Authorization"].removeprefix("Bearer ")
        envs = [service_env(url, f"{name}-{i}", redis_url) for i in range(2)]
        with (
            running(trees[0], ["web"], envs[0], Path(tmp)) as (web_a,),
            running(trees[1], ["web"], envs[1], Path(tmp)) as (web_b,),
        ):
            targets = [(web_a.pid, int(envs[0]["PORT"])), (web_b.pid, int(envs[1]["PORT"]))]
            for _, port in targets:
                wait_until(lambda port=port: ready(port), timeout=60, what="web is ready")
                wrk(port, "/users/", (users[0], users[-1]), key, 2)  # warm-up
            rps: list[list[float]] = [[], []]
            cpu: list[list[float]] = [[], []]
            for n in range(rounds):
                for i in (0, 1) if n % 2 == 0 else (1, 0):
                    pid, port = targets[i]
                    before = cpu_seconds(pid)
                    w = wrk(port, "/users/", (users[0], users[-1]), key, seconds)
                    rps[i].append(w.rps)
                    cpu[i].append((cpu_seconds(pid) - before) * 1000 / max(1, w.requests))
                    print(
                        f"round {n} {'AB'[i]}: {w.rps:7.0f} req/s  {cpu[i][-1]:.3f} CPU ms/req"
                        f"  p50 {w.p50_ms:.1f} p99 {w.p99_ms:.1f} ms  non-2xx {w.non_2xx}",
                        flush=True,
                    )
    ratios("req/s", rps[0], rps[1])
    ratios("CPU ms/request", cpu[0], cpu[1])


@contextmanager
def serving(tree: str, env: dict[str, str], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`tree`'s web, worker and sweeper, once web is ready and the worker consumes."""
    port = int(env["PORT"])
    log = logs / f"{Path(tree).name}-worker.log"
    booted = log.read_text().count("ready for action") if log.exists() else 0
    with running(tree, ["web", "worker", "sweeper"], env, logs) as procs:
        wait_until(lambda: ready(port), timeout=60, what="web is ready")
        wait_until(
            lambda: log.read_text().count("ready for action") >= booted + 2,
            timeout=60,
            what="the worker is ready",
        )
        yield procs


def intake_round(
    tree: str,
    env: dict[str, str],
    logs: Path,
    url: str,
    headers: dict[str, str],
    pairs: list[tuple[int, int, int]],
    rate: float,
    seconds: float,
) -> tuple[float, float, str]:
    """One tree's web, worker and sweeper under the offered load: (p50, p99, a summary)."""
    port = int(env["PORT"])
    with serving(tree, env, logs) as procs:
        offered = offer_transfers(port, headers, lambda k: pairs[k], rate=rate, seconds=seconds)
        wait_terminal(url, offered.accepted, timeout=120)
        assert all(p.poll() is None for p in procs)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d)"
            " FROM (SELECT extract(epoch FROM settled_at - created_at) * 1000 AS d"
            " FROM transfers WHERE id = ANY(%s) AND settled_at IS NOT NULL) AS s",
            (offered.accepted,),
        ).fetchone()
    assert row is not None
    summary = (
        f"achieved {offered.achieved_rate:.0f}/s ({offered.late} late),"
        f" accepted {offered.accepted_rate:.0f}/s"
    )
    return float(row[0]), float(row[1]), summary


def intake(trees: tuple[str, str], rounds: int, rate: float, seconds: float) -> None:
    p99: list[list[float]] = [[], []]
    rng = random.Random(3)
    with bench_servers() as (url, name, redis_url), tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(url, autocommit=True) as conn:
            _, accounts = bulk_accounts(conn, 2000, balance=10_000_000)
            headers = operator_headers(conn)
        for n in range(rounds):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                pairs = random_transfers(rng, accounts, int(rate * seconds))
                env = service_env(url, f"{name}-{n}-{i}", redis_url)
                p50, p, summary = intake_round(
                    trees[i], env, Path(tmp), url, headers, pairs, rate, seconds
                )
                p99[i].append(p)
                print(
                    f"round {n} {'AB'[i]}: {summary}, accepted -> settled p50 {p50:.1f}"
                    f" p99 {p:.1f} ms",
                    flush=True,
                )
    ratios("accepted -> settled p99", p99[0], p99[1])


def saturation(trees: tuple[str, str], rounds: int, seconds: float) -> None:
    figures = ("accepted_per_s", "settled_per_s", "settled_vs_accepted", "settle_p99_ms")
    got: list[dict[str, list[float]]] = [{f: [] for f in figures} for _ in trees]
    cpu: list[list[float]] = [[], []]
    with (
        bench_servers() as (url, name, redis_url),
        tempfile.TemporaryDirectory() as tmp,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        _, accounts = bulk_accounts(conn, 2000, balance=10_000_000)
        key = operator_headers(conn)["Authorization"].removeprefix("Bearer ")
        for n in range(rounds):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                env = service_env(url, f"{name}-{n}-{i}", redis_url)
                with serving(trees[i], env, Path(tmp)) as (web, worker, _):
                    b = bench_saturation.burst(
                        port=int(env["PORT"]),
                        key=key,
                        conn=conn,
                        accounts=accounts,
                        seconds=seconds,
                        pids={"web": web.pid, "worker": worker.pid},
                    )
                for f in figures:
                    got[i][f].append(b[f])
                cpu[i].append(sum(b["cpu_ms_per_transfer"].values()))
                print(
                    f"round {n} {'AB'[i]}: accepted {b['accepted_per_s']:.0f}/s (refused"
                    f" {b['refused'] or 'none'}), settled during the burst"
                    f" {b['settled_per_s']:.0f}/s ({b['settled_vs_accepted']:.2f}x),"
                    f" accepted -> settled p50 {b['settle_p50_ms']:.0f} p99"
                    f" {b['settle_p99_ms']:.0f} ms, last settlement"
                    f" {b['last_settled_after_last_accepted_s']:.2f} s after the last POST,"
                    " CPU ms/transfer "
                    + ", ".join(f"{r} {v:.2f}" for r, v in b["cpu_ms_per_transfer"].items()),
                    flush=True,
                )
    for f in figures:
        ratios(f, got[0][f], got[1][f])
    ratios("web + worker CPU ms per transfer", cpu[0], cpu[1])


@contextmanager
def tree_database(tree: str, server_url: str, name: str) -> Iterator[str]:
    """A database named `name` on `server_url`'s server, migrated by `tree`'s own
    `settle migrate`; dropped on exit."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    try:
        subprocess.run(
            [str(SETTLE), "migrate"],
            cwd=tree,
            env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": tree},
            check=True,
            capture_output=True,
        )
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def settle_round(tree: str, env: dict[str, str], logs: Path, url: str, ids: list[int]) -> float:
    """One tree's `settle worker` draining `ids`, queued before it starts: transfers/s."""
    from shared.config import Settings
    from worker import actors

    broker = actors.declare(Settings.from_env(env))
    try:
        broker.send_batches(ids)
    finally:
        broker.close()
    with running(tree, ["worker"], env, logs):
        wait_terminal(url, ids, timeout=300)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'settled'),"
            " extract(epoch FROM max(finished_at) - min(finished_at))"
            " FROM transfers WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None and int(row[0]) == len(ids), row
    return (len(ids) - 1) / float(row[1])


def settlement(trees: tuple[str, str], rounds: int, transfers: int) -> None:
    rates: list[list[float]] = [[], []]
    rng = random.Random(8)
    with contextlib.ExitStack() as stack:
        server, name, redis_url = stack.enter_context(bench_servers())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        urls = [stack.enter_context(tree_database(t, server, f"{name}_{'ab'[i]}"))
                for i, t in enumerate(trees)]  # fmt: skip
        accounts = []
        for url in urls:
            with psycopg.connect(url, autocommit=True) as conn:
                accounts.append(bulk_accounts(conn, 2000, balance=10_000_000)[1])
        for n in range(rounds):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                pairs = random_transfers(rng, accounts[i], transfers)
                with psycopg.connect(urls[i], autocommit=True) as conn:
                    ids = insert_pending(conn, pairs, tag=f"ab-{n}-{i}")
                env = service_env(urls[i], f"{name}-{n}-{i}", redis_url)
                rates[i].append(settle_round(trees[i], env, Path(tmp), urls[i], ids))
                print(f"round {n} {'AB'[i]}: {rates[i][-1]:7.0f} transfers/s", flush=True)
    ratios("settlement transfers/s", rates[0], rates[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("what", choices=["reads", "intake", "settle", "saturation"])
    parser.add_argument("tree_a")
    parser.add_argument("tree_b")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--transfers", type=int, default=10_000)
    args = parser.parse_args()
    trees = (str(Path(args.tree_a).resolve()), str(Path(args.tree_b).resolve()))
    if args.what == "reads":
        reads(trees, args.rounds or 4, args.seconds or 5.0)
    elif args.what == "settle":
        settlement(trees, args.rounds or 4, args.transfers)
    elif args.what == "saturation":
        saturation(trees, args.rounds or 4, args.seconds or 15.0)
    else:
        intake(trees, args.rounds or 2, args.rate, args.seconds or 15.0)


if __name__ == "__main__":
    main()
