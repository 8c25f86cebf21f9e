"""The per-process pool of a dramatiq worker: opened after the fork, closed after the worker
threads have been joined.

The actor reaches the pool through `current_pool()`: like dramatiq's CurrentMessage, the
middleware hands it to the worker thread for the duration of each message, so an actor uses
the pool of whichever broker delivered the message (the one the dramatiq CLI loads, or a
broker a test builds with other settings).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, MiddlewareError
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db.budget import BudgetExceeded, capacity, make_plan
from shared.db.leases import LeaseKeeper
from shared.db.pool import create_pool
from shared.runtime.settings import Settings

log = logging.getLogger(__name__)

_current = threading.local()


def current_pool() -> ConnectionPool:
    """The pool of the worker processing this thread's message.

    Raises `RuntimeError` outside a message handled by a worker with a `DatabasePool`.
    """
    pool: ConnectionPool | None = getattr(_current, "pool", None)
    if pool is None:
        raise RuntimeError("no worker pool: call this from an actor run by a dramatiq worker")
    return pool


#: Seconds a worker thread waits for a pooled connection before the message is retried.
WORKER_POOL_TIMEOUT = 30.0


def _acquire_unless_stopped(lease: LeaseKeeper) -> int:
    """Wait for a share of the budget; 0 if SIGTERM arrives meanwhile. Dramatiq's own handler
    only sets a flag it reads once booted, so ours is chained in front of it for the wait."""
    stopped = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return lease.acquire(stopping=stopped.is_set)
    finally:
        signal.signal(signal.SIGTERM, previous)


class DatabasePool(Middleware):
    """Owns this worker process's pool (one connection per worker thread)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: ConnectionPool | None = None
        self._lease: LeaseKeeper | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the worker pool is opened when the worker process boots")
        return self._pool

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # A MiddlewareError is the one failure dramatiq does not swallow here (any other is
        # logged and the worker runs on without a pool): every failure becomes one, so the
        # process refuses to start instead of running threads that have no database.
        try:
            self._open(self._settings)
        except MiddlewareError:
            raise
        except Exception as exc:
            raise MiddlewareError(f"worker pool could not be opened: {exc}") from exc

    def _open(self, settings: Settings) -> None:
        try:
            plan = make_plan(settings, capacity(settings))
        except BudgetExceeded as exc:
            raise MiddlewareError(exc.message) from None
        lease = LeaseKeeper(
            settings, "worker", wanted=plan.worker.pool_size, budget=plan.capacity.available
        )
        size = _acquire_unless_stopped(lease)
        if size == 0:
            # Asked to stop before it ever ran: a clean exit, not a failure. SystemExit is
            # not an Exception, so dramatiq's hook runner lets it end the process.
            log.info("stopped while waiting for a share of the connection budget")
            raise SystemExit(0)
        # Threads beyond the grant (more processes than planned) wait for a connection
        # rather than fail: a worker thread without one has nothing else to do.
        pool = create_pool(settings, "worker", size=size, timeout=WORKER_POOL_TIMEOUT)
        try:
            pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            pool.close()
            lease.close()
            raise MiddlewareError(f"worker pool could not connect to Postgres: {exc}") from None
        lease.keep(pool)
        self._pool, self._lease = pool, lease
        log.info("worker pool open: %d connections", pool.max_size)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _current.pool = self._pool

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        _current.pool = None

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _current.pool = None

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._pool is not None:
            self._pool.close()
            if self._lease is not None:
                self._lease.close()
                self._lease = None
            self._pool = None
            log.info("worker pool closed")
