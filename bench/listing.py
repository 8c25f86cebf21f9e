"""The bench's listing section: GET /transfers on a ledger of a million transfers, each list
shape beside GET /transfers/{id} on the same ledger in the same run (the baseline), wrk
-t2 -c32, rounds alternated, medians quoted.

The ledger is `shared.testing.bulk`'s (mostly settled, a few failed and pending, a merchant
account receiving one transfer in twenty, one transfer in ten with an `order_id`), on a
scratch database of its own next to the run's, served by a `settle web` of its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import Processes, operator_headers, ready, wait_until
from bench.load import Wrk, wrk
from bench.memory import RssSampler
from shared.ledger import listing
from shared.testing.bulk import Bulk, load
from shared.testing.scratch import scratch_database

BASELINE = "GET /transfers/{id}"
PAGE = 100


@dataclass(frozen=True)
class Target:
    label: str
    path: str  # `{id}` is replaced by a random integer in `ids`
    ids: tuple[int, int]


def targets(bulk: Bulk, middle: str) -> list[Target]:
    accounts = (bulk.accounts[1], bulk.accounts[-1])
    orders = (bulk.first_id // 10 + 1, bulk.last_id // 10)  # o-{id}0: one transfer each
    page = (PAGE, PAGE)  # a path that varies nothing names its limit as its `{id}`
    fixed = "/transfers?limit={id}"
    return [
        Target(BASELINE, "/transfers/{id}", (bulk.first_id, bulk.last_id)),
        Target("newest page", fixed, page),
        Target("page from the middle (cursor)", f"{fixed}&cursor={middle}", page),
        Target("status=failed (3%)", f"{fixed}&status=failed", page),
        Target(
            "status=pending (1%), from the middle", f"{fixed}&status=pending&cursor={middle}", page
        ),
        Target(
            "account_id=<random account>", f"/transfers?limit={PAGE}&account_id={{id}}", accounts
        ),
        Target(
            "account_id=<merchant>&status=failed",
            f"{fixed}&account_id={bulk.merchant}&status=failed",
            page,
        ),
        Target(
            "metadata[order_id]=<random order>",
            f"/transfers?limit={PAGE}&metadata%5Border_id%5D=o-{{id}}0",
            orders,
        ),
    ]


def middle_cursor(conn: psycopg.Connection, bulk: Bulk) -> str:
    row = conn.execute(
        "SELECT id, created_at FROM transfers WHERE id = %s",
        ((bulk.first_id + bulk.last_id) // 2,),
    ).fetchone()
    assert row is not None
    return listing.transfer_cursor({"id": row[0], "created_at": row[1]})


def run_section(
    *,
    server_url: str,
    service_env: Callable[[str, str], dict[str, str]],
    logs: Path,
    rss: RssSampler,
    transfers: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """Load `transfers` into a scratch database on `server_url`'s server, start `settle web`
    on it (`service_env(url, name)` is its environment) and wrk each target in turn."""
    with (
        scratch_database(server_url, prefix="settle_bench_listing") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        bulk = load(conn, transfers)
        key = operator_headers(conn)["Authorization"].removeprefix("Bearer ")
        shapes = targets(bulk, middle_cursor(conn, bulk))
        env = service_env(url, "listing")
        port = int(env["PORT"])
        procs = Processes(env, logs)
        try:
            web = procs.start("web")
            rss.watch("web", web.pid)
            wait_until(lambda: ready(port), timeout=60, what="settle web (listing) is ready")
            for t in shapes:  # warm-up: pools filled, pages cached; not counted
                answer = wrk(port, t.path, t.ids, key, 1)
                if answer.non_2xx:
                    raise SystemExit(f"bench: {t.label} ({t.path}) answered non-2xx")
            runs: dict[str, list[Wrk]] = {t.label: [] for t in shapes}
            for _ in range(rounds):
                for t in shapes:
                    w = wrk(port, t.path, t.ids, key, seconds)
                    runs[t.label].append(w)
                    print(
                        f"  {t.label:44} {w.rps:7.0f} req/s  p50 {w.p50_ms:6.1f} ms"
                        f"  p99 {w.p99_ms:6.1f} ms"
                    )
        finally:
            procs.stop_all()
    base = runs[BASELINE]
    out: dict[str, Any] = {
        "transfers": transfers,
        "page": PAGE,
        "wrk": "-t2 -c32",
        "seconds_per_round": seconds,
        "baseline": BASELINE,
    }
    for label, done in runs.items():
        out[label] = {
            "rps": statistics.median(w.rps for w in done),
            "p50_ms": statistics.median(w.p50_ms for w in done),
            "p99_ms": statistics.median(w.p99_ms for w in done),
            "non_2xx": sum(w.non_2xx for w in done),
            "rps_vs_baseline": statistics.median(
                w.rps / b.rps for w, b in zip(done, base, strict=True)
            ),
            "p50_vs_baseline": statistics.median(
                w.p50_ms / b.p50_ms for w, b in zip(done, base, strict=True)
            ),
        }
    return out


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    base = result[BASELINE]
    found: list[tuple[str, ...]] = []
    for label, figures in result.items():
        if not isinstance(figures, dict) or label == BASELINE:
            continue
        found.append(
            (
                f"GET /transfers {label}, page of {result['page']}, {result['transfers']:,}"
                " transfers (wrk -t2 -c32)",
                f"{figures['rps']:.0f} req/s, p50 {figures['p50_ms']:.1f} / p99"
                f" {figures['p99_ms']:.1f} ms, {figures['non_2xx']} non-2xx",
                f"{BASELINE} (one transfer) {base['rps']:.0f} req/s, p50 {base['p50_ms']:.1f} ms",
                f"{figures['rps_vs_baseline']:.2f}x req/s, {figures['p50_vs_baseline']:.1f}x p50",
                "a page of 100 vs one row",
            )
        )
    return found
