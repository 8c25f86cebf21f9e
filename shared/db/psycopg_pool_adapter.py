"""Every use of psycopg_pool's private internals, in one place.

Checked against psycopg_pool 3.3.3 (`CHECKED_VERSION`): its `ConnectionPool.resize` and
`_return_connection` in `psycopg_pool/pool.py`, the `_lock`, `_min_size`, `_max_size`,
`_nconns` and `_pool` attributes, `_check_size`, `_close_connection` and the `AddConnection`
maintenance task. tests/integration/test_adapters.py fails on any other version
and when one of those names changes: re-read that code before moving `CHECKED_VERSION`.

The public API covers the rest (`resize` for the limits, `get_stats()` for what is held), but
not shrinking for real, which the connection budget needs (see `ElasticPool`).
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool
from psycopg_pool.pool import AddConnection

#: The psycopg_pool release whose internals this module was written against.
CHECKED_VERSION = "3.3.3"

#: The private attributes and methods of a `ConnectionPool` used here.
PRIVATE_NAMES = (
    "_lock", "_min_size", "_max_size", "_nconns", "_pool",
    "_check_size", "_close_connection", "_return_connection", "run_task",
)  # fmt: skip


class ElasticPool(ConnectionPool):
    """A ConnectionPool that shrinks for real. psycopg_pool's `resize` lowers the limits but
    keeps surplus connections until they sit idle for `max_idle`; this one closes idle
    surplus at once and busy surplus when it is returned."""

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
