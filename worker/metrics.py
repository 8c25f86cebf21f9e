"""The worker processes' own series, and the transfer id on their log lines.

`Telemetry` is a dramatiq middleware (first in the broker's list, so that its after-hook runs
last, once Retries has decided whether a failed message is retried or dead). Per actor:
messages processed, errors, retries, dead (retries exhausted) and durations in seconds; for
the settle actor, counted by the actor itself, `settle_transfer_retries_total` (the
transfers whose attempt failed and is retried), each transfer's outcome
(`settle_transfers_finished_total{outcome,failure_code}`, counted once, when it is decided)
and the accepted -> settled latency. It also publishes the worker pool's stats once a
second.

The series go to the files of the worker role (`settle worker` prepared them, see
`shared.runtime.multiproc`), which the web's `/metrics` on the same host adds to its answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from prometheus_client import Counter, Gauge, Histogram

from shared.broker.messages import transfer_ids
from shared.runtime import logs
from shared.runtime.metrics import PoolStats, Publisher, publish_pool
from worker.pool import LendConnections

log = logging.getLogger(__name__)

PROCESSED = Counter(
    "settle_worker_messages_processed", "Messages the workers finished, by actor", ["actor"]
)
ERRORS = Counter("settle_worker_message_errors", "Messages whose actor raised, by actor", ["actor"])
RETRIES = Counter(
    "settle_worker_message_retries", "Messages sent back for another attempt, by actor", ["actor"]
)
DEAD = Counter(
    "settle_worker_messages_dead", "Messages whose retries ran out (dead-lettered)", ["actor"]
)
DURATION = Histogram(
    "settle_worker_message_duration_seconds",
    "Time an actor took per message",
    ["actor"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IN_PROGRESS = Gauge(
    "settle_worker_messages_in_progress",
    "Messages being processed now (live worker processes)",
    ["actor"],
    multiprocess_mode="livesum",
)
TRANSFER_RETRIES = Counter(
    "settle_transfer_retries", "Settlement attempts that failed transiently and are retried"
)
FINISHED = Counter(
    "settle_transfers_finished",
    "Transfers the workers settled or failed, by outcome and failure code (empty when"
    " settled), each counted once when it was decided",
    ["outcome", "failure_code"],
)
#: The outcomes a settlement can decide, present at zero from a worker's start, so that
#: rate() and ratios have every series before the first failure.
OUTCOMES = (
    ("settled", ""),
    ("failed", "insufficient_funds"),
    ("failed", "balance_limit_exceeded"),
    ("failed", "linked_transfer_failed"),
)
SETTLE_LATENCY = Histogram(
    "settle_transfer_settle_latency_seconds",
    "Time from a transfer's acceptance (its row committed) to its settlement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def count_finished(outcome: str, failure_code: str | None) -> None:
    """Count one transfer this worker settled or failed just now."""
    FINISHED.labels(outcome, failure_code or "").inc()


class Telemetry(Middleware):
    """Counts messages per actor, binds a settle message's transfer id to log lines (when it
    carries one id), and publishes the worker pool's stats while a worker runs in this
    process."""

    def __init__(self, database: LendConnections, settle_actors: Collection[str]) -> None:
        self._database = database
        self._settle_actors = frozenset(settle_actors)
        self._local = threading.local()
        self._publisher: Publisher | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for outcome, failure_code in OUTCOMES:
            FINISHED.labels(outcome, failure_code)
        self._publisher = publish_pool(self._database.pool, self._database.role)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
            PoolStats(None, self._database.role).clear()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._local.started = time.perf_counter()
        IN_PROGRESS.labels(message.actor_name).inc()
        if message.actor_name in self._settle_actors:
            # A batch's log lines name their transfers themselves.
            ids = _carried(message)
            if len(ids) == 1:
                self._local.token = logs.transfer_id.set(ids[0])

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        actor = message.actor_name
        started = getattr(self._local, "started", None)
        if started is not None:
            DURATION.labels(actor).observe(time.perf_counter() - started)
            IN_PROGRESS.labels(actor).dec()
        PROCESSED.labels(actor).inc()
        if exception is not None:
            ERRORS.labels(actor).inc()
            if message.failed:
                DEAD.labels(actor).inc()
            else:
                RETRIES.labels(actor).inc()
        self._done()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        started = getattr(self._local, "started", None)
        if started is not None:
            IN_PROGRESS.labels(message.actor_name).dec()
        self._done()

    def _done(self) -> None:
        self._local.started = None
        token = getattr(self._local, "token", None)
        if token is not None:
            logs.transfer_id.reset(token)
            self._local.token = None


def _carried(message: MessageProxy) -> list[int]:
    """The transfer ids of a settle message; none for a malformed one (the actor refuses it,
    and that is counted as its error)."""
    try:
        return transfer_ids(message)
    except ValueError:
        return []
