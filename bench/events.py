"""What the transfer events cost the settlement's SQL: `settle_transfers` on batches of 100
pending transfers, with the event triggers on and off in turn, on one connection.

    .venv/bin/python -m bench.events [--rounds 6] [--batches 60]

A scratch database (DATABASE_URL's server, an embedded one when unset) with 2,000 funded
accounts; each round inserts `batches` x 100 pending transfers among them (triggers off, so
both sides start from the same rows), then settles them batch by batch with the triggers on
for one half of the batches and off for the other, alternating in blocks of 5 batches (the
first of each block untimed: switching the triggers makes Postgres plan the function's
statements again), and compares the median time per batch. One connection, no worker and
no broker: the database's own work per batch (and one round trip), which is where the
events are written. `python -m bench.ab settle` measures the same change end to end, with
its noise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from bench.harness import bench_servers, bulk_accounts, insert_pending, random_transfers
from shared.ledger.operations import DEFAULT_RETRY

BATCH = 100
BLOCK = 5
TRIGGERS = ("transfer_events_on_insert", "transfer_events_on_update")


def set_triggers(conn: psycopg.Connection, on: bool) -> None:
    switch = sql.SQL("ENABLE" if on else "DISABLE")
    for trigger in TRIGGERS:
        conn.execute(
            sql.SQL("ALTER TABLE transfers {} TRIGGER {}").format(switch, sql.Identifier(trigger))
        )


def settle(conn: psycopg.Connection, ids: list[int]) -> float:
    started = time.perf_counter()
    conn.execute(
        "SELECT count(*) FROM settle_transfers(%s::bigint[], %s, %s, %s, %s)",
        (ids, uuid.uuid4().hex, *DEFAULT_RETRY.params()),
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    rng = random.Random(5)
    ratios: list[float] = []
    with bench_servers() as (url, _, _), psycopg.connect(url, autocommit=True) as conn:
        _, accounts = bulk_accounts(conn, 2000, balance=10_000_000)
        for n in range(args.rounds):
            set_triggers(conn, False)
            pairs = random_transfers(rng, accounts, args.batches * BATCH)
            ids = insert_pending(conn, pairs, tag=f"events-{n}-{uuid.uuid4().hex[:6]}")
            times: dict[bool, list[float]] = {True: [], False: []}
            batches = [ids[b * BATCH : (b + 1) * BATCH] for b in range(args.batches)]
            for block in range(0, args.batches, BLOCK):
                on = (block // BLOCK + n) % 2 == 0
                set_triggers(conn, on)
                settle(conn, batches[block])
                times[on] += [settle(conn, batch) for batch in batches[block + 1 : block + BLOCK]]
            with_events = statistics.median(times[True]) * 1000
            without = statistics.median(times[False]) * 1000
            ratios.append(with_events / without)
            print(
                f"round {n}: a batch of {BATCH} in {with_events:.2f} ms with the events,"
                f" {without:.2f} ms without: {ratios[-1]:.3f}x",
                flush=True,
            )
        set_triggers(conn, True)
    print(
        f"time per batch with/without events: {[round(r, 3) for r in ratios]},"
        f" median {statistics.median(ratios):.3f}x"
    )


if __name__ == "__main__":
    main()
