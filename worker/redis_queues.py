"""`BrokerOperations` on dramatiq's Redis broker: depths and dead letters are read from the
keys its dispatch script writes, by `shared.runtime.queues` (one implementation, which
/metrics and `settle status` use too)."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from dramatiq.brokers.redis import RedisBroker

from shared.runtime import queues
from worker.queues import TRANSFER_QUEUE, BrokerUnreachable, DropsDeadLettersOf


class RedisOperations(DropsDeadLettersOf):
    """Queue depths, dead letters, ping and the heartbeat on a Redis broker."""

    name = "redis"

    def __init__(self, broker: RedisBroker, *, client: redis.Redis | None = None) -> None:
        """On `broker`'s keys, through its own client unless `client` is given."""
        self._broker = broker
        self._client: redis.Redis = client if client is not None else broker.client

    def ping(self) -> None:
        try:
            self._client.ping()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc

    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        try:
            return queues.queue_counts(self._client, self._broker.namespace, queue)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        try:
            return queues.dead_letters(self._client, self._broker.namespace, queue)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        try:
            queues.discard_dead_letters(self._client, self._broker.namespace, queue, ids)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc

    def drop_dead_letters_of(
        self, transfer_ids: Iterable[int], queue: str = TRANSFER_QUEUE
    ) -> None:
        # Redis scans its dead-letter hash in batches rather than reading it whole.
        try:
            queues.drop_dead_letters_of(self._client, self._broker.namespace, queue, transfer_ids)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc

    def beat(self) -> None:
        """`SettleRedisBroker.beat`: this worker's heartbeat, and the messages of workers
        whose heartbeat expired back on their queues."""
        beat = getattr(self._broker, "beat", None)
        if beat is None:
            return  # a plain RedisBroker: dramatiq's own random maintenance only
        try:
            beat()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"Redis: {exc}") from exc
