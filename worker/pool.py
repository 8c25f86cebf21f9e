"""The per-process pool of a dramatiq worker: opened after the fork, closed after the worker
threads have been joined.

The actor reaches the pool through `current_pool()`: like dramatiq's CurrentMessage, the
middleware hands it to the worker thread for the duration of each message, so an actor uses
the pool of whichever broker delivered the message (the one the dramatiq CLI loads, or a
broker a test builds with other settings).
"""

from __future__ import annotations

import logging
import threading

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, MiddlewareError
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db import create_pool
from shared.settings import Settings

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


class DatabasePool(Middleware):
    """Owns this worker process's pool (one connection per worker thread)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the worker pool is opened when the worker process boots")
        return self._pool

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # A MiddlewareError is the one failure dramatiq does not swallow here: the process
        # refuses to start instead of running threads that have no database.
        pool = create_pool(self._settings, "worker")
        try:
            pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            pool.close()
            raise MiddlewareError(f"worker pool could not connect to Postgres: {exc}") from None
        self._pool = pool
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
            self._pool = None
            log.info("worker pool closed")
