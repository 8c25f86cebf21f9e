"""Long-polls: requests that wait for new events without holding a database connection.

One `EventWatch` per web process reads the horizon of the event sequence (`feed.horizon`) on
a connection of its own (the `events` role of the connection budget), every EVENT_POLL_MS
while a request waits and never otherwise, and wakes the waiting requests when it moves;
each then reads what it waits for on a pooled connection held for that read only. At most
EVENT_WAITERS requests wait at once in a process (each holds a waitress thread): beyond
that, and once the watch is closed (the process is stopping), a request is answered at once
with what exists.

The watch reads rather than LISTENs: NOTIFY in every transaction that writes an event would
serialize their commits under one server-wide lock, and a read needs no session of its own,
so it works through PgBouncer in transaction mode (docs/decisions/event-horizon.md).

`read_events` and `read_transfer` are the two long-polls; both take the pool and raise what
`shared.db.pool.connection` and the use cases raise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from psycopg_pool import ConnectionPool

from shared.db import Row
from shared.db.pool import connection
from shared.events.feed import EventQuery, Page, horizon, read_page
from shared.ledger.auth import Principal
from shared.ledger.operations import get_transfer

log = logging.getLogger(__name__)


class EventWatch:
    """Wakes the long-polls of one process when the horizon moves (see the module's text).

    `start` starts its thread; `admitted()` is a context manager answering whether one more
    request may wait (at most `limit` at once); `wait_past(seen, deadline)` blocks until the
    horizon is beyond `seen` (True) or `deadline` (time.monotonic) passes or the watch is
    closed (False); `close` wakes every waiter, admits no more and stops the thread. The
    horizon is read on `pool` (one connection is enough) every `interval` seconds while a
    request is admitted; a failed read is logged and tried again."""

    def __init__(self, pool: ConnectionPool, *, limit: int, interval: float) -> None:
        self._pool = pool
        self._limit = limit
        self._interval = interval
        self._cond = threading.Condition()
        self._waiting = 0
        self._horizon = 0
        self._closed = False
        self._pause = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def horizon(self) -> int:
        """The horizon as last read (0 before the first read)."""
        return self._horizon

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet answered."""
        return self._waiting

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Answer every waiter now and admit no more; stop the thread. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pause.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[bool]:
        """Whether the caller may wait (it holds a place until the block ends)."""
        with self._cond:
            ok = not self._closed and self._waiting < self._limit
            if ok:
                self._waiting += 1
                self._cond.notify_all()  # the thread polls while anyone waits
        try:
            yield ok
        finally:
            if ok:
                with self._cond:
                    self._waiting -= 1

    def wait_past(self, seen: int, deadline: float) -> bool:
        """Block until the horizon is beyond `seen` (True), or until `deadline` or `close`
        (False)."""
        with self._cond:
            while not self._closed and self._horizon <= seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._closed

    def _run(self) -> None:
        failing = False
        while True:
            with self._cond:
                while not self._closed and self._waiting == 0:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                with connection(self._pool) as conn:
                    now = horizon(conn)
            except Exception as exc:  # the next poll tries again; waiters wait meanwhile
                if not failing:
                    log.warning("event watch: cannot read the horizon, retrying: %s", exc)
                    failing = True
                self._pause.wait(max(self._interval, 0.5))
                continue
            if failing:
                log.info("event watch: reading the horizon again")
                failing = False
            with self._cond:
                if now > self._horizon:
                    self._horizon = now
                    self._cond.notify_all()
            self._pause.wait(self._interval)


@contextlib.contextmanager
def _place(watch: EventWatch | None) -> Iterator[bool]:
    if watch is None:
        yield False
        return
    with watch.admitted() as ok:
        yield ok


def read_events(
    pool: ConnectionPool,
    query: EventQuery,
    *,
    by: Principal,
    retention_days: int,
    watch: EventWatch | None,
) -> tuple[Page, bool]:
    """The page `feed.read_page` answers; when it is empty and `query.wait` is not 0, the
    first page with an event for `by` that appears within `query.wait` seconds, or an empty
    page at the deadline. Returns (page, whether a wait asked for could be made: False when
    the process has no room for another waiter or is stopping, and the empty page is
    answered at once)."""
    with connection(pool) as conn:
        page = read_page(conn, query, by=by, retention_days=retention_days)
    if page.items or query.wait == 0:
        return page, True
    deadline = time.monotonic() + query.wait
    with _place(watch) as admitted:
        if not admitted:
            return page, False
        assert watch is not None
        while watch.wait_past(page.horizon, deadline):
            # Read on from where the last page ended: nothing up to it was for `by`.
            query = replace(query, after=page.next_after)
            with connection(pool) as conn:
                page = read_page(conn, query, by=by, retention_days=retention_days)
            if page.items:
                break
    return page, True


def decided(transfer: Row) -> bool:
    """Whether a transfer waited for has an outcome: settled, failed (or cancelled), or
    dead-lettered (only an operator moves it on from there)."""
    return transfer["status"] != "pending" or transfer["dead_lettered_at"] is not None


def read_transfer(
    pool: ConnectionPool,
    transfer_id: int,
    *,
    by: Principal,
    wait: int,
    watch: EventWatch | None,
) -> tuple[Row, bool]:
    """The transfer (`get_transfer`); while it is pending, up to `wait` seconds until it is
    `decided`. Returns (transfer, whether the wait was honoured: it was decided already, or
    the request could wait). Raises `TransferNotFound` as `get_transfer` does."""
    with connection(pool) as conn:
        seen = horizon(conn)  # before the read: any later change has an event above it
        transfer = get_transfer(conn, transfer_id, by=by)
    if wait == 0 or decided(transfer):
        return transfer, True
    deadline = time.monotonic() + wait
    with _place(watch) as admitted:
        if not admitted:
            return transfer, False
        assert watch is not None
        while watch.wait_past(seen, deadline):
            with connection(pool) as conn:
                seen = horizon(conn)
                transfer = get_transfer(conn, transfer_id, by=by)
            if decided(transfer):
                break
    return transfer, True
