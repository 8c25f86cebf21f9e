"""Every use of psycopg_pool's private internals, in one place.

Checked against psycopg_pool 3.3.3 (`CHECKED_VERSION`): its `ConnectionPool.resize`,
`_return_connection` and `_add_connection` in `psycopg_pool/pool.py`, the `_lock`,
`_min_size`, `_max_size`, `_nconns` and `_pool` attributes, `_check_size`,
`_close_connection`, the `AddConnection` maintenance task, and `AttemptWithBackoff` in
`psycopg_pool/base.py`. tests/integration/test_adapters.py fails on any other version and
when one of those names changes: re-read that code before moving `CHECKED_VERSION`.

The public API covers the rest (`resize` for the limits, `get_stats()` for what is held), but
not shrinking for real, which the connection budget needs, nor a bound on the wait between
two attempts to replace a lost connection, which a prompt recovery from an outage needs (see
`ElasticPool`).
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool import AddConnection

log = logging.getLogger(__name__)

#: The psycopg_pool release whose internals this module was written against.
CHECKED_VERSION = "3.3.3"

#: The private attributes and methods of a `ConnectionPool` used here.
PRIVATE_NAMES = (
    "_lock", "_min_size", "_max_size", "_nconns", "_pool",
    "_check_size", "_close_connection", "_return_connection", "_add_connection", "run_task",
)  # fmt: skip

#: The longest wait between two attempts to replace a lost connection, in seconds.
RECONNECT_DELAY_MAX = 2.0


class CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's backoff between attempts to replace a lost connection (1 s, doubled
    after each failure, until `reconnect_timeout`), doubled up to `RECONNECT_DELAY_MAX` only.

    Uncapped, the wait grows with the outage: after 20 s without Postgres the next attempt
    was up to 16 s away, and web answered 503 for about 10 s after Postgres was back. Capped,
    a pool is whole again within `RECONNECT_DELAY_MAX` of Postgres's return, for the price of
    one failed connection attempt per lost connection every 2 s while it is away. Each delay
    is logged at DEBUG (psycopg_pool logs each failure at WARNING)."""

    def __init__(self, *, timeout: float, pool: str) -> None:
        super().__init__(timeout=timeout)
        self.pool = pool

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_DELAY_MAX)
        log.debug("pool %r: next connection attempt in %.2fs", self.pool, self.delay)


class ElasticPool(ConnectionPool):
    """A ConnectionPool that shrinks for real, and replaces lost connections promptly.
    psycopg_pool's `resize` lowers the limits but keeps surplus connections until they sit
    idle for `max_idle`; this one closes idle surplus at once and busy surplus when it is
    returned. Its attempts to replace a lost connection wait `CappedBackoff` between them."""

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # The first attempt of a replacement comes without one: psycopg_pool would make an
        # uncapped `AttemptWithBackoff`, and hands this one on to every attempt that follows.
        if attempt is None:
            attempt = CappedBackoff(timeout=self.reconnect_timeout, pool=self.name)
        super()._add_connection(attempt, growing=growing)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        # Not super().resize(): it grows by the change of min_size, ignoring busy surplus
        # connections still counted after a shrink, so shrinking 4 -> 2 and growing back to 4
        # while all four are busy would open two more (six held). Grow from what is held.
        min_size, max_size = self._check_size(min_size, max_size)
        surplus: list[Any] = []
        with self._lock:
            self._min_size, self._max_size = min_size, max_size
            ngrow = max(0, min_size - self._nconns)
            self._nconns += ngrow
            while self._nconns > self._max_size and self._pool:
                surplus.append(self._pool.popleft())
                self._nconns -= 1
        for conn in surplus:
            self._close_connection(conn)
        for _ in range(ngrow):
            self.run_task(AddConnection(self))

    def _return_connection(self, conn: Any, from_getconn: bool) -> None:
        with self._lock:
            surplus = self._nconns > self._max_size
            if surplus:
                self._nconns -= 1
        if surplus:
            self._close_connection(conn)
            return
        super()._return_connection(conn, from_getconn)

    @property
    def held(self) -> int:
        """Connections this pool holds or is opening now (public: `get_stats()`)."""
        return int(self.get_stats().get("pool_size", 0))
