"""The per-process pool of a dramatiq worker: leased and opened when the worker process
boots (after the fork), closed after its worker threads have been joined.

The actor reaches the pool through `current_pool()`: like dramatiq's CurrentMessage, the
middleware hands it to the worker thread for the duration of each message, so an actor uses
the pool of whichever broker delivered the message (the one the dramatiq CLI loads, or a
broker a test builds with other settings).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.budget import BudgetExceeded
from shared.errors import DependencyDown
from shared.runtime.boot import make_plan_for
from shared.runtime.exits import EXIT_REFUSED, EXIT_UNREACHABLE, exit_with
from shared.runtime.leased_pool import leased_pool
from shared.runtime.signals import stop_signals

log = logging.getLogger(__name__)

_current = threading.local()


def current_pool() -> ConnectionPool:
    """The pool of the worker processing this thread's message.

    Raises `RuntimeError` outside a message handled by a worker with `LendConnections`.
    """
    pool: ConnectionPool | None = getattr(_current, "pool", None)
    if pool is None:
        raise RuntimeError("no worker pool: call this from an actor run by a dramatiq worker")
    return pool


#: Seconds a worker thread waits for a pooled connection before the message is retried.
WORKER_POOL_TIMEOUT = 30.0


class LendConnections(Middleware):
    """Leases this worker process's share of the connection budget when the worker boots,
    lends the pool it sizes to each message (`current_pool()`), and gives both back after
    the worker threads have stopped (`shared.runtime.leased_pool`).

    A worker process that cannot boot ends with one line and the supervisor's boot-failure
    code: exit 2 when the plan does not fit (the budget may have changed since `settle
    worker` checked it), 3 when Postgres cannot be reached. dramatiq swallows every other
    hook error (the worker would run on with no database) and reports a plain exception as
    exit 1, the code of a killed worker process, which `settle worker` restarts forever.
    """

    def __init__(self, settings: Settings, *, role: str = "worker") -> None:
        self._settings = settings
        self.role = role
        self._pool: ConnectionPool | None = None
        self._held = contextlib.ExitStack()

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the worker pool is opened when the worker process boots")
        return self._pool

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        settings = self._settings
        try:
            plan = make_plan_for(settings)
        except BudgetExceeded as exc:
            exit_with("worker", exc.message, EXIT_REFUSED)
        except DependencyDown as exc:
            exit_with("worker", exc.message, EXIT_UNREACHABLE)
        # dramatiq's own SIGTERM handler only sets a flag it reads once booted: ours runs
        # in front of it while this process waits for its share of the budget.
        with stop_signals({signal.SIGTERM}, chain=True) as stop:
            try:
                # Threads beyond the grant (more processes than planned) wait for a
                # connection rather than fail: a worker thread without one can only wait.
                pool = self._held.enter_context(
                    leased_pool(
                        settings, self.role, plan, stopping=stop.is_set, timeout=WORKER_POOL_TIMEOUT
                    )
                )
            except DependencyDown as exc:
                exit_with("worker", exc.message, EXIT_UNREACHABLE)
        if pool is None:
            # Asked to stop before it ever ran: a clean exit. SystemExit is no Exception, so
            # dramatiq's hook runner lets it end the process.
            log.info("stopped while waiting for a share of the connection budget")
            self._held.close()
            raise SystemExit(0)
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
            self._pool = None
            self._held.close()
            log.info("worker pool closed")
