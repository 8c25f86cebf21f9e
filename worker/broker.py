"""The dramatiq broker: the one sanctioned global, set before the actor module is imported.

The middleware list is explicit. TimeLimit is left out on purpose: it injects an exception
into the actor's thread, and one landing during COMMIT would leave the outcome unknown;
Postgres timeouts (statement, lock, idle-in-transaction) bound the transfer work instead.

Recovery from a killed worker: every worker process beats every `HEARTBEAT_INTERVAL`
seconds and runs the broker's maintenance on each beat (see `worker.middleware`), so the
messages a dead worker had fetched are back on their queue about `HEARTBEAT_TIMEOUT_MS`
after its last beat. Taking a live but silent worker for dead costs only a redelivery,
which the idempotent actor ignores.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Retries

from shared.db.pool import TRANSIENT
from shared.errors import Unavailable
from shared.runtime.settings import Settings
from worker.metrics import Telemetry
from worker.middleware import DeadLetterMarks, Heartbeat
from worker.pool import DatabasePool

#: The settle actor's name (worker.actors declares it; the middleware needs it first).
SETTLE_ACTOR = "settle_transfer"

#: A worker process whose last heartbeat is older than this is taken for dead and the
#: messages it had fetched are requeued. Five beats: a live worker is never that late unless
#: Redis itself stalls.
HEARTBEAT_TIMEOUT_MS = 5_000
HEARTBEAT_INTERVAL = 1.0

#: The broker command a heartbeat sends: dramatiq's dispatch script records the heartbeat of
#: every command, runs maintenance when asked, and does nothing else for an unknown one.
_BEAT = "heartbeat"


class SettleRedisBroker(RedisBroker):
    """dramatiq's Redis broker, plus `beat()`: a heartbeat that always runs maintenance."""

    def _should_do_maintenance(self, command: str) -> int:
        # dramatiq 2.2 decides per command; other commands keep its random chance.
        if command == _BEAT:
            return 1
        return int(super()._should_do_maintenance(command))

    def beat(self) -> None:
        """Refresh this broker's heartbeat and requeue the fetched-but-unacked messages of
        workers whose heartbeat has expired, on every declared queue and delay queue.
        Raises redis errors."""
        queues = self.get_declared_queues() | self.get_declared_delay_queues()
        for queue in sorted(queues):
            self.do_heartbeat(queue)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy, unreachable or chose a victim (the
    actor raises those as `dramatiq.Retry`)."""
    return isinstance(exc, (*TRANSIENT, Unavailable, dramatiq.Retry))


def create_broker(settings: Settings) -> tuple[SettleRedisBroker, DatabasePool]:
    """A Redis broker for `settings` with retries for transient errors only, the middleware
    that owns each worker process's pool, the heartbeat, and the dead-letter mark.
    Connects lazily."""
    max_retries = settings.transfer_max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        # `retries` counts the retries already made: TRANSFER_MAX_RETRIES=N allows N of them.
        return retries < max_retries and is_transient(exc)

    database = DatabasePool(settings)
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
    )
    broker = SettleRedisBroker(
        client=client,
        namespace=settings.broker_namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        middleware=[
            # First: its after-hook runs last, once Retries has marked a message failed.
            Telemetry(database, SETTLE_ACTOR),
            AgeLimit(),
            # Before Retries: after-hooks run in reverse, and Retries decides "failed".
            DeadLetterMarks(database, SETTLE_ACTOR),
            Retries(
                max_retries=max_retries,
                min_backoff=settings.transfer_min_backoff_ms,
                max_backoff=settings.transfer_max_backoff_ms,
                retry_when=retry_when,
            ),
            database,
        ],
    )
    broker.add_middleware(Heartbeat(broker.beat, interval=HEARTBEAT_INTERVAL))
    return broker, database


broker, database = create_broker(Settings.from_env())
dramatiq.set_broker(broker)
