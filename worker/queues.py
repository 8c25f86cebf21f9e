"""The queue transfers travel on, and the operations Settle needs from the broker that
carries it, in one small interface with one implementation per broker
(`worker.redis_queues`, `worker.rabbitmq`).

This module imports no broker: the worker supervisor passes the queue name to dramatiq,
and tools (metrics, the dashboard, `settle dead-letters`) call `broker_operations(broker)`
on the broker they were given, without importing the actors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import dramatiq
from dramatiq import Message

from shared.runtime.queues import message_transfer_ids

#: The queue the settle actor consumes and web sends to.
TRANSFER_QUEUE = "transfers"


class BrokerOperations(Protocol):
    """What Settle does with its broker besides sending and consuming. Every method raises
    `BrokerUnreachable` when the broker cannot be reached."""

    #: "redis" or "rabbitmq".
    name: str

    def ping(self) -> None:
        """Check that the broker answers (readiness)."""

    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        """{state: messages} for `queue` (`shared.runtime.queues`: ready, in_flight, delayed,
        dead; a state the broker cannot tell, RabbitMQ's in_flight, is left out)."""

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        """Transfer id -> the broker's ids of the messages in `queue`'s dead-letter queue
        that carry it. The ids are only good for `discard_dead_letters`."""

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        """Drop the messages with these ids (from `dead_letters`) from the dead-letter
        queue; ids no longer there are ignored."""

    def drop_dead_letters_of(
        self, transfer_ids: Iterable[int], queue: str = TRANSFER_QUEUE
    ) -> None:
        """Drop the dead letters of these transfers (sent again, or ended); a message that
        also carries a transfer not given is kept."""

    def beat(self) -> None:
        """One beat of a worker process's heartbeat (`worker.middleware.Heartbeat`): what
        the broker needs so that the messages a dead worker held go back on their queue."""


class BrokerUnreachable(Exception):
    """Raised by `BrokerOperations` when the broker cannot be reached or fails a command."""


def transfer_ids(message: Message) -> list[int]:
    """The transfer ids a settle message carries (one id, or a list of ids)."""
    return message_transfer_ids(message.args) if message.args else []


class DropsDeadLettersOf:
    """`drop_dead_letters_of` for any broker, from its `dead_letters` and
    `discard_dead_letters`."""

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        raise NotImplementedError

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        raise NotImplementedError

    def drop_dead_letters_of(
        self, transfer_ids: Iterable[int], queue: str = TRANSFER_QUEUE
    ) -> None:
        wanted = set(transfer_ids)
        if not wanted:
            return
        holders: dict[str, set[int]] = {}
        for tid, message_ids in self.dead_letters(queue).items():
            for mid in message_ids:
                holders.setdefault(mid, set()).add(tid)
        self.discard_dead_letters([mid for mid, tids in holders.items() if tids <= wanted], queue)


def broker_operations(broker: dramatiq.Broker) -> BrokerOperations:
    """The operations for `broker` (a Redis or RabbitMQ broker). Raises `TypeError` for any
    other kind."""
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        from worker.redis_queues import RedisOperations

        return RedisOperations(broker)
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    if isinstance(broker, RabbitmqBroker):
        from worker.rabbitmq import RabbitmqOperations

        return RabbitmqOperations(broker)
    raise TypeError(f"no broker operations for {type(broker).__name__}")
