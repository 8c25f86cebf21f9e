"""The vital signs operators watch, read cheaply: transfers by status, the oldest pending
transfer, the transfers being retried, and the live connection leases. `/metrics` reads it
on every scrape and `settle status` once, so every query here uses an index or Postgres's
statistics, never a scan of the ledger.

Each function takes a connection and raises only driver errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

#: Up to this many transfers (by Postgres's live-row statistics) they are counted exactly;
#: beyond, settled and failed are estimated from the planner's statistics.
EXACT_COUNT_LIMIT = 100_000

STATUSES = ("pending", "settled", "failed")


@dataclass(frozen=True)
class TransferCounts:
    """Transfers per status, and how many of the pending ones are dead-lettered."""

    by_status: dict[str, int]
    dead_lettered: int
    exact: bool  # False: settled and failed are estimates


def transfer_counts(conn: psycopg.Connection) -> TransferCounts:
    """Pending (and dead-lettered) transfers counted through their partial indexes; settled
    and failed counted exactly on a small table, estimated from pg_stats on a large one."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM transfers WHERE status = 'pending'"
        "        AND dead_lettered_at IS NULL),"
        " (SELECT count(*) FROM transfers WHERE dead_lettered_at IS NOT NULL),"
        " (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'transfers'::regclass)"
    ).fetchone()
    assert row is not None
    waiting, parked, live = int(row[0]), int(row[1]), int(row[2] or 0)
    pending = waiting + parked
    if live <= EXACT_COUNT_LIMIT:
        found = dict.fromkeys(STATUSES, 0)
        for status, count in conn.execute(
            "SELECT status, count(*) FROM transfers WHERE status <> 'pending' GROUP BY status"
        ).fetchall():
            found[str(status)] = int(count)
        found["pending"] = pending
        return TransferCounts(found, parked, exact=True)
    stats = conn.execute(
        "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats"
        " WHERE schemaname = current_schema() AND tablename = 'transfers'"
        " AND attname = 'status'"
    ).fetchone()
    freqs = dict(zip(stats[0], stats[1], strict=True)) if stats and stats[0] else {}
    done = max(0, live - pending)
    settled_share = freqs.get("settled", 1.0)
    failed_share = freqs.get("failed", 0.0)
    total_share = (settled_share + failed_share) or 1.0
    failed = round(done * failed_share / total_share)
    by_status = {"pending": pending, "settled": done - failed, "failed": failed}
    return TransferCounts(by_status, parked, exact=False)


def oldest_pending_age(conn: psycopg.Connection) -> float:
    """Seconds since the oldest pending transfer (dead-lettered ones included) was
    accepted; 0 when none is pending."""
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM now() - least("
        " (SELECT min(created_at) FROM transfers WHERE status = 'pending'"
        "  AND dead_lettered_at IS NULL),"
        " (SELECT min(created_at) FROM transfers WHERE dead_lettered_at IS NOT NULL))), 0)"
    ).fetchone()
    assert row is not None
    return max(0.0, float(row[0]))


@dataclass(frozen=True)
class Retrying:
    """Transfers being retried: pending, not dead-lettered, with a failed attempt in their
    current retry budget (`transfers.failed_attempts`)."""

    count: int
    oldest_seconds: float  # since the oldest of them was accepted; 0 when there is none


def retrying(conn: psycopg.Connection) -> Retrying:
    """How many transfers are being retried, and the age of the oldest (read through the
    partial index of pending transfers)."""
    row = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
        " FROM transfers WHERE status = 'pending' AND dead_lettered_at IS NULL"
        " AND failed_attempts > 0"
    ).fetchone()
    assert row is not None
    return Retrying(int(row[0]), max(0.0, float(row[1])))


@dataclass(frozen=True)
class LeaseSummary:
    """The live connection leases (heartbeat within the TTL), per role."""

    processes: dict[str, int] = field(default_factory=dict)  # role -> live leases
    granted: dict[str, int] = field(default_factory=dict)  # role -> connections granted
    budget: int | None = None  # the smallest budget a live lease was configured with

    @property
    def leased(self) -> int:
        return sum(self.granted.values())


def leases(conn: psycopg.Connection, ttl_seconds: float) -> LeaseSummary:
    """Live leases per role: how many processes hold one and the connections granted."""
    rows = conn.execute(
        "SELECT role, count(*), sum(granted), min(budget) FROM connection_leases"
        " WHERE heartbeat_at >= now() - make_interval(secs => %s) GROUP BY role",
        (ttl_seconds,),
    ).fetchall()
    budgets = [int(row[3]) for row in rows]
    return LeaseSummary(
        processes={str(row[0]): int(row[1]) for row in rows},
        granted={str(row[0]): int(row[2]) for row in rows},
        budget=min(budgets) if budgets else None,
    )
