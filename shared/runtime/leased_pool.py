"""A process's pool, sized by its lease on the connection budget, in the one safe order."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import psycopg

from shared.config import Settings
from shared.db.budget import Plan
from shared.db.leases import LeaseKeeper
from shared.db.pool import ElasticPool, create_pool
from shared.errors import DependencyDown, first_line


@contextlib.contextmanager
def leased_pool(
    settings: Settings,
    role: str,
    plan: Plan,
    *,
    stopping: Callable[[], bool],
    timeout: float | None = None,
    open_timeout: float = 10.0,
) -> Iterator[ElasticPool | None]:
    """This process's pool, sized by its lease on the connection budget, for the `with` body.

    The order is what keeps the connections all processes hold within the budget:
    1. register the lease and wait until at least one connection is granted (yields None,
       holding nothing, if `stopping()` turns true meanwhile: the caller exits cleanly);
    2. open the pool at the granted size, and only then
    3. heartbeat the lease from a thread that resizes the pool as the grant moves;
    4. on the way out stop the heartbeat (nothing resizes a closing pool), close the pool,
       and release the lease last. Released first, the lease would let other processes grow
       into connections this one still holds.
    A lease that cannot be taken, or a pool that cannot connect within `open_timeout` (then
    closed and its lease released), raises `DependencyDown`. `timeout` is how long a borrower
    waits for a connection (default POOL_TIMEOUT).
    """
    wanted = {r.role: r for r in plan.roles}[role].pool_size
    lease = LeaseKeeper(settings, role, wanted=wanted, budget=plan.capacity.available)
    try:
        size = lease.acquire(stopping=stopping)
    except psycopg.Error as exc:  # Postgres went away since the plan was read
        raise DependencyDown(
            f"Postgres unreachable: the {role} lease could not be taken: {first_line(exc)}"
        ) from None
    if size == 0:
        yield None
        return
    pool = create_pool(settings, role, size=size, timeout=timeout)
    try:
        pool.open(wait=True, timeout=open_timeout)
    except Exception:
        pool.close()
        lease.close()
        raise DependencyDown(
            f"Postgres unreachable: the {role} pool could not connect within {open_timeout:g}s"
        ) from None
    lease.keep(pool)
    try:
        yield pool
    finally:
        lease.stop_heartbeat()
        pool.close()
        lease.close()
