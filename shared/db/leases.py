"""Live enforcement of the connection budget: every process holds a lease on its share.

The static plan (`shared.db.budget`) assumes the process counts it was given. Operators start
more (another host, `honcho start -c worker=3`, a rolling deploy), so each process also
registers a lease row in Postgres and heartbeats it. The protocol, run under one advisory
lock so that processes take turns:

- A lease has `wanted` (the plan's pool size) and `granted` (what its pool may hold now).
  Leases whose heartbeat is older than LEASE_TTL_SECONDS are deleted: their process died,
  and with it its connections.
- Targets are computed from all live leases: each gets `wanted` when the sum fits the
  budget; otherwise, oldest first, each gets one connection while any are left, and the
  rest is dealt out one at a time up to `wanted`. A new process that finds no connection
  left waits (and logs why) until one is free.
- `granted` only grows when the sum of all grants stays within the budget, and it only
  shrinks after the process's pool has closed its surplus connections. So the sum of the
  connections actually held never exceeds the budget, even while pools resize.
- A live process whose heartbeats fail for half the TTL shrinks its pool to one connection
  until it is heard again; a lease deleted meanwhile comes back counting only what is free.
- The budget kept to is the smallest any live lease was configured with.

Polls while waiting for a first grant, heartbeats while the pool is saturated, and releases
use short connections outside the pool; they come out of DB_RESERVED_CONNECTIONS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg_pool import PoolTimeout

from shared.config import Settings
from shared.db.pool import application_name, connect_once
from shared.db.psycopg_pool_adapter import ElasticPool

log = logging.getLogger(__name__)

#: Arbitrary constant identifying the lease lock among advisory locks.
_LOCK_ID = 0x5E771F


@dataclass(frozen=True)
class Lease:
    holder: str
    wanted: int
    granted: int


def fair_targets(leases: Sequence[Lease], budget: int) -> dict[str, int]:
    """What each lease (oldest first) should hold: its `wanted` when everyone fits,
    otherwise one each while any are left, then the rest dealt out one at a time."""
    if sum(lease.wanted for lease in leases) <= budget:
        return {lease.holder: lease.wanted for lease in leases}
    targets = {lease.holder: 0 for lease in leases}
    left = budget
    for lease in leases:
        if left > 0:
            targets[lease.holder] = 1
            left -= 1
    while left > 0:
        dealt = False
        for lease in leases:
            if left > 0 and 0 < targets[lease.holder] < lease.wanted:
                targets[lease.holder] += 1
                left -= 1
                dealt = True
        if not dealt:
            break
    return targets


@dataclass(frozen=True)
class Turn:
    """The outcome of one turn of the protocol for one holder."""

    target: int  # what this holder should hold
    granted: int  # what it may hold now (<= target when growing, >= target when shrinking)
    holders: int
    in_use: int  # sum of all grants


def take_turn(
    conn: psycopg.Connection,
    *,
    holder: str,
    role: str,
    wanted: int,
    budget: int,
    ttl_seconds: float,
    held: int,
) -> Turn:
    """Register or heartbeat `holder`'s lease, expire dead ones, and move its grant toward
    its fair target as far as the budget allows now. `held` is what its pool holds. The
    budget kept to is the smallest any live lease was configured with."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "DELETE FROM connection_leases WHERE holder <> %s"
            " AND heartbeat_at < now() - make_interval(secs => %s)",
            (holder, ttl_seconds),
        )
        updated = conn.execute(
            "UPDATE connection_leases SET heartbeat_at = now(), wanted = %s, budget = %s"
            " WHERE holder = %s",
            (wanted, budget, holder),
        )
        if updated.rowcount == 0:
            # New, or expired while alive (its heartbeats stalled past the TTL and others may
            # have grown into its share): it may count only what is free now; its pool
            # shrinks to that before it holds more.
            conn.execute(
                "INSERT INTO connection_leases (holder, role, wanted, budget, granted)"
                " SELECT %s, %s, %s, %s, GREATEST(0, LEAST(%s, least(min(budget), %s)"
                " - coalesce(sum(granted), 0))) FROM connection_leases",
                (holder, role, wanted, budget, held, budget),
            )
        rows = conn.execute(
            "SELECT holder, wanted, granted, budget FROM connection_leases"
            " ORDER BY acquired_at, holder"
        ).fetchall()
        leases = [Lease(*row[:3]) for row in rows]
        budget = min(row[3] for row in rows)
        target = fair_targets(leases, budget)[holder]
        granted = next(lease.granted for lease in leases if lease.holder == holder)
        in_use = sum(lease.granted for lease in leases)
        new = granted
        if target > granted:
            new = min(target, granted + max(0, budget - in_use))
        elif target < granted and held <= target:
            new = target
        if new != granted:
            conn.execute(
                "UPDATE connection_leases SET granted = %s WHERE holder = %s", (new, holder)
            )
            in_use += new - granted
        return Turn(target=target, granted=new, holders=len(leases), in_use=in_use)


def release(conn: psycopg.Connection, holder: str) -> None:
    """Give the lease back (its pool is closed): others may grow into it at once."""
    conn.execute("DELETE FROM connection_leases WHERE holder = %s", (holder,))


class LeaseKeeper:
    """One process's lease: wait for a first grant, then heartbeat and resize the pool.

    `acquire` blocks until at least one connection is granted (or `stopping()` turns true,
    when it returns 0). `keep(pool)` starts the heartbeat thread; `close()` stops it and
    releases the lease; call it after the pool is closed.
    """

    def __init__(self, settings: Settings, role: str, *, wanted: int, budget: int) -> None:
        self._settings = settings
        self._role = role
        self._wanted = wanted
        self._budget = budget
        self.holder = application_name(role, settings.hostname)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ElasticPool | None = None
        self._last_ok = 0.0

    def _turn(self, conn: psycopg.Connection, held: int) -> Turn:
        return take_turn(
            conn,
            holder=self.holder,
            role=self._role,
            wanted=self._wanted,
            budget=self._budget,
            ttl_seconds=self._settings.lease_ttl_seconds,
            held=held,
        )

    @property
    def interval(self) -> float:
        return max(0.2, self._settings.lease_ttl_seconds / 5)

    def _direct(self) -> psycopg.Connection:
        """A short-lived connection outside the pool (it comes out of the reserve)."""
        return connect_once(self._settings, f"{self._role}-lease", timeouts=True)

    def acquire(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Wait for a first grant; return its size (0 if `stopping()` became true). Each
        poll opens its own short connection, so a waiting process holds none meanwhile."""
        logged = False
        while True:
            with self._direct() as conn:
                turn = self._turn(conn, held=0)
                if turn.granted == 0 and stopping():
                    release(conn, self.holder)
                    return 0
            if turn.granted > 0:
                self._last_ok = time.monotonic()
                log.info(
                    "connection lease %s: %d of %d wanted (%d of %d in use by %d holders)",
                    self.holder, turn.granted, self._wanted, turn.in_use, self._budget,
                    turn.holders,
                )  # fmt: skip
                return turn.granted
            if not logged:
                log.warning(
                    "waiting for the connection budget: %d of %d in use by %d other"
                    " processes; %s will start when one frees up",
                    turn.in_use, self._budget, turn.holders - 1, self.holder,
                )  # fmt: skip
                logged = True
            if self._stop.wait(self.interval) or stopping():
                with self._direct() as conn:
                    release(conn, self.holder)
                return 0

    def keep(self, pool: ElasticPool) -> None:
        """Heartbeat the lease from `pool` in a daemon thread, resizing `pool` as grants move."""
        self._pool = pool
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._pool is not None
        pool = self._pool
        fenced = False
        while not self._stop.wait(self.interval):
            try:
                self.step(pool)
                fenced = False
            except Exception as exc:  # the next heartbeat tries again
                log.warning("connection lease %s: heartbeat failed: %s", self.holder, exc)
                # Past half the TTL without a heartbeat, others may soon take this lease for
                # dead and grow into its share: keep to one connection until heard again.
                silent = time.monotonic() - self._last_ok
                if not fenced and silent > self._settings.lease_ttl_seconds / 2:
                    log.warning(
                        "connection lease %s: no heartbeat for %.1fs; pool down to 1",
                        self.holder, silent,
                    )  # fmt: skip
                    pool.resize(1, 1)
                    fenced = True

    def step(self, pool: ElasticPool) -> Turn:
        """One heartbeat: move the grant, then make the pool follow it. The heartbeat borrows
        from the pool, or, when the pool is saturated for longer than a heartbeat interval,
        takes a short connection of its own, so that a busy process never looks dead."""
        try:
            with pool.connection(timeout=self.interval) as conn:
                turn = self._turn(conn, held=pool.held)
        except PoolTimeout:
            with self._direct() as conn:
                turn = self._turn(conn, held=pool.held)
        self._last_ok = time.monotonic()
        size = max(1, min(turn.target, turn.granted))
        if size != pool.max_size:
            log.info(
                "connection lease %s: pool %d -> %d (target %d, %d holders)",
                self.holder, pool.max_size, size, turn.target, turn.holders,
            )  # fmt: skip
            pool.resize(size, size)
        return turn

    def stop_heartbeat(self) -> None:
        """Stop heartbeating (and resizing the pool); the lease is kept until `close`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop heartbeating and delete the lease."""
        self.stop_heartbeat()
        try:
            with self._direct() as conn:
                release(conn, self.holder)
        except psycopg.Error as exc:  # it expires on its own after LEASE_TTL_SECONDS
            log.warning("connection lease %s: could not release: %s", self.holder, exc)
