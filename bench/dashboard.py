"""What a dashboard refresh costs the database: the overview's queries against the plain
ones they replace, on a scratch database holding an hour of 100 transfers per second.

Prints ratios from A/B rounds alternated in one run (absolute times on a shared machine are
noise): the last hour's chart read whole vs. with its completed minutes kept (what every
refresh after the first does), and counts by status as `vitals.transfer_counts` reads them
(partial indexes, and estimates on a table this large) vs. a GROUP BY over the table.
Bounded: one bulk insert, seven rounds of each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import psycopg

from bench.harness import bench_servers
from shared.ledger import overview, vitals
from web.dashboard.data import LastHour

ROWS = 360_000  # one hour at 100 transfers per second
ROUNDS = 7


def _seed(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO users (email, name) VALUES ('t@example.com', 'T'), ('u@example.com', 'U')"
    )
    conn.execute(
        "INSERT INTO accounts (user_id, currency, allow_negative_balance)"
        " VALUES (1, 'EUR', true), (2, 'EUR', false)"
    )
    # Settled transfers, no entries: the ledger is not what is measured here.
    conn.execute(
        "INSERT INTO transfers (idempotency_key, request_hash, from_account_id, to_account_id,"
        " amount, currency, idempotency_scope, status, settled_at, finished_at, created_at)"
        " SELECT 'bench-' || g, 'h', 1, 2, 1, 'EUR', 'operator', 'settled',"
        " now() - g * interval '10 ms', now() - g * interval '10 ms',"
        " now() - g * interval '10 ms' - interval '20 ms' FROM generate_series(1, %s) g",
        (ROWS,),
    )
    conn.execute("VACUUM ANALYZE transfers")


def _timed(call: Callable[[], object], times: list[float]) -> None:
    started = time.perf_counter()
    call()
    times.append(time.perf_counter() - started)


def main() -> None:
    with bench_servers() as (url, _name, _redis), psycopg.connect(url, autocommit=True) as conn:
        _seed(conn)
        kept = LastHour()
        kept.rows(conn)  # the first refresh reads the whole hour
        whole: list[float] = []
        incremental: list[float] = []
        indexed: list[float] = []
        scanned: list[float] = []
        for _ in range(ROUNDS):
            _timed(lambda: overview.last_hour(conn), whole)
            _timed(lambda: kept.rows(conn), incremental)
            _timed(lambda: vitals.transfer_counts(conn), indexed)
            _timed(
                lambda: conn.execute(
                    "SELECT status, count(*) FROM transfers GROUP BY status"
                ).fetchall(),
                scanned,
            )
    a, b = statistics.median(whole), statistics.median(incremental)
    c, d = statistics.median(scanned), statistics.median(indexed)
    print(f"{ROWS:,} transfers finished in the last hour, {ROUNDS} alternated rounds (medians)")
    print(f"last hour chart: whole hour / completed minutes kept = {a / b:.1f}x")
    print(f"transfers by status: GROUP BY / vitals.transfer_counts = {c / d:.1f}x")


if __name__ == "__main__":
    main()
