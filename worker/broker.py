"""The dramatiq broker: the one sanctioned global, set before the actor module is imported.

The middleware list is explicit. TimeLimit is left out on purpose: it injects an exception
into the actor's thread, and one landing during COMMIT would leave the outcome unknown;
Postgres timeouts (statement, lock, idle-in-transaction) bound the transfer work instead.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Retries

from shared.db import TRANSIENT
from shared.errors import Unavailable
from shared.settings import Settings
from worker.pool import DatabasePool


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy, unreachable or chose a victim."""
    return isinstance(exc, (*TRANSIENT, Unavailable))


def create_broker(settings: Settings) -> tuple[RedisBroker, DatabasePool]:
    """A Redis broker for `settings` with retries for transient errors only, plus the
    middleware that owns each worker process's pool. Connects lazily."""
    max_retries = settings.transfer_max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        # `retries` counts the retries already made: TRANSFER_MAX_RETRIES=N allows N of them.
        return retries < max_retries and is_transient(exc)

    database = DatabasePool(settings)
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
    )
    broker = RedisBroker(
        client=client,
        namespace=settings.broker_namespace,
        middleware=[
            AgeLimit(),
            Retries(
                max_retries=max_retries,
                min_backoff=settings.transfer_min_backoff_ms,
                max_backoff=settings.transfer_max_backoff_ms,
                retry_when=retry_when,
            ),
            database,
        ],
    )
    return broker, database


broker, database = create_broker(Settings.from_env())
dramatiq.set_broker(broker)
