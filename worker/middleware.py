"""Worker middleware for faults: a heartbeat that hands a dead worker's messages back fast,
an exit for worker processes whose dramatiq master died, the retry budget lent to the settle
actors, and the dead-letter mark of a message that failed on an error not worth retrying.

What a beat does is the broker's (`shared.broker.base.SettleBroker.beat`): on Redis it runs
the maintenance that requeues a dead worker's messages (see `shared.broker.redis_broker`);
on RabbitMQ nothing, since the server itself puts back the messages of a consumer whose
connection closed, and the heartbeat only watches the master.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Collection

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from shared.broker import messages
from shared.broker.base import HEARTBEAT_INTERVAL, SettleBroker
from shared.db.pool import TRANSIENT, connection
from shared.errors import BrokerUnavailable, Unavailable
from shared.ledger import dead_letters
from shared.ledger.operations import RetryPolicy
from worker.pool import LendConnections

log = logging.getLogger(__name__)

_current = threading.local()


class Heartbeat(Middleware):
    """Calls the broker's `beat()` every `interval` seconds while a worker runs in this
    process. In a dramatiq worker process whose master is gone (killed with SIGKILL, its
    children live on as orphans) it asks the process to stop, as a SIGTERM would: in-flight
    messages finish, prefetched ones go back to the queue."""

    def __init__(self, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        beat = broker.beat if isinstance(broker, SettleBroker) else _no_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(beat, self._stop), name="settle-heartbeat", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 10)
            self._thread = None

    def _run(self, beat: Callable[[], None], stop: threading.Event) -> None:
        # Set only in processes started by multiprocessing: the dramatiq CLI's workers.
        master = multiprocessing.parent_process()
        failing = False
        while not stop.is_set():
            if master is not None and not master.is_alive():
                log.error("dramatiq master %s is gone; stopping this worker process", master.pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                beat()
                if failing:
                    log.info("broker heartbeat restored")
                failing = False
            except BrokerUnavailable as exc:
                if not failing:  # one line per outage, not one per beat
                    log.warning("broker heartbeat failed, will keep trying: %s", exc)
                failing = True
            stop.wait(self._interval)


class RetriesExhausted(Exception):
    """Raised by a settle actor when its attempt spent the retry budget of transfers it
    carries (Postgres dead-lettered them in the same statement): the message is not
    retried, and goes to the dead-letter queue."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy, unreachable or chose a victim (the
    actor raises those as `dramatiq.Retry`, once Postgres has counted the attempt)."""
    return isinstance(exc, (*TRANSIENT, Unavailable, dramatiq.Retry))


class RetryBudget(Middleware):
    """The retry budget of the settle actors, which Postgres keeps per transfer
    (`shared.ledger.operations.RetryPolicy`). It lends the actor this broker's policy and
    the id of the message being processed (`current_budget()`; a retried message keeps its
    id, which names its retry chain in Postgres), as `LendConnections` lends the pool.

    `retry_when` is what dramatiq's Retries asks: transient failures are retried, within
    TRANSFER_MAX_RETRIES per message. The actor retries only while Postgres counted budget
    left, so that limit is a backstop for attempts Postgres could not count (it was down)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def retry_when(self, retries: int, exc: BaseException) -> bool:
        # `retries` counts the retries already made: TRANSFER_MAX_RETRIES=N allows N of them.
        return retries < self.policy.max_retries and is_transient(exc)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _current.budget = (self.policy, message.message_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        _current.budget = None

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _current.budget = None


def current_budget() -> tuple[RetryPolicy, str]:
    """The retry policy of the broker that delivered this thread's message, and the id of
    that message. Raises `RuntimeError` outside a message handled by a worker with
    `RetryBudget`."""
    budget: tuple[RetryPolicy, str] | None = getattr(_current, "budget", None)
    if budget is None:
        raise RuntimeError("no retry budget: call this from an actor run by a dramatiq worker")
    return budget


class DeadLetterMarks(Middleware):
    """When a settle message fails for good on an error not worth retrying (or after
    TRANSFER_MAX_RETRIES retries that Postgres could not count), dead-letters every transfer
    it carries that is still pending, in Postgres: `dead_lettered_at` and `last_error`. A
    message whose retry budget ran out (`RetriesExhausted`) needs nothing: Postgres
    dead-lettered its transfers when it counted their last attempt. The message itself goes
    to the dead-letter queue as dramatiq does it.

    It must come before Retries in the middleware list: `after_*` hooks run in reverse
    order, and Retries is what decides that the message failed.
    """

    def __init__(self, database: LendConnections, actor_names: Collection[str]) -> None:
        self._database = database
        self._actor_names = frozenset(actor_names)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if not message.failed or message.actor_name not in self._actor_names:
            return
        if isinstance(exception, RetriesExhausted):
            return
        transfer_ids = messages.transfer_ids(message)
        if isinstance(exception, dramatiq.Retry):
            error = str(exception)  # the actor put the transient error's name and text there
        elif exception is not None:
            error = f"{type(exception).__name__}: {exception}".strip()
        else:
            error = "failed"
        try:
            with connection(self._database.pool) as conn:
                marked = dead_letters.mark_all(conn, transfer_ids, error)
        except Exception as exc:  # Postgres may be why it failed; the sweeper re-drives it
            for transfer_id in transfer_ids:
                log.error(
                    "transfer %s: failed (%s) but could not be dead-lettered (%s);"
                    " the sweeper will send it again",
                    transfer_id,
                    error,
                    exc,
                )
            return
        for transfer_id in marked:
            log.error("transfer %s: dead-lettered: %s", transfer_id, error)


def _no_beat() -> None:
    """The beat of a broker that is not Settle's: only the master is watched."""
