"""`SettleBroker`: what Settle does with its message broker, on either broker. It is the
dramatiq broker itself (dramatiq's Redis or RabbitMQ broker, subclassed in
`shared.broker.redis_broker` and `shared.broker.rabbitmq_broker`), so the one object a
process builds is what its actors are declared on, what its workers consume from, and what
it sends, counts and cleans up through.

Every operation below raises `shared.errors.BrokerUnavailable` when the broker cannot be
reached or fails the command: each subclass names its client's errors (`client_errors`) and
they are translated here, at the boundary, so no caller catches `redis.RedisError` and misses
the RabbitMQ case.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import dramatiq
import dramatiq.errors
from dramatiq import Message

from shared.broker.messages import BATCH_MAX, TRANSFER_QUEUE, delivery_messages, settle_messages
from shared.errors import BrokerUnavailable, first_line

#: The states a queue's messages are counted in, in the order `settle status` prints them:
#: ready (waiting for a worker), in_flight (fetched by a worker, not yet acknowledged),
#: delayed (waiting for their retry time) and dead.
STATES = ("ready", "in_flight", "delayed", "dead")

#: A queue's name -> {state: messages} (a state the broker cannot tell is left out).
QueueCounts = Callable[[str], dict[str, int]]

#: Which of the given transfer ids are dead-lettered (in Postgres).
StillDeadLettered = Callable[[list[int]], Collection[int]]

#: Seconds between two beats of a worker process's heartbeat (`SettleBroker.beat`).
HEARTBEAT_INTERVAL = 1.0


class SettleBroker(dramatiq.Broker, abc.ABC):
    """A dramatiq broker with what Settle needs besides consuming: sending transfer ids in
    batches, queue depths, dead letters, readiness and the workers' heartbeat. Every method
    raises `BrokerUnavailable` when the broker cannot be reached."""

    #: "redis" or "rabbitmq".
    name: ClassVar[str]
    #: The errors this broker's client raises when the broker is unreachable or refuses.
    client_errors: ClassVar[tuple[type[BaseException], ...]]

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """Turn the client's errors raised inside, and dramatiq's connection errors, into
        `BrokerUnavailable`."""
        failures: tuple[type[BaseException], ...] = (
            *self.client_errors,
            dramatiq.errors.BrokerConnectionError,
        )
        try:
            yield
        except failures as exc:
            raise BrokerUnavailable(
                f"the message broker is unavailable ({self.name}: {first_line(exc)})"
            ) from exc

    def send_batches(self, transfer_ids: Sequence[int], *, size: int = BATCH_MAX) -> int:
        """Queue `transfer_ids` for settlement in messages of at most `size` ids; returns the
        number of messages. When it raises, some messages may have been queued: sending
        twice is harmless."""
        messages = settle_messages(transfer_ids, size=size)
        with self.translated():
            self.enqueue_many(messages)
        return len(messages)

    def enqueue_many(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Enqueue `messages` (none delayed), one at a time unless the broker can do better;
        returns them as enqueued. Raises the client's errors."""
        return [self.enqueue(message) for message in messages]

    def send_deliveries(self, delivery_ids: Sequence[int]) -> int:
        """Queue one attempt of each webhook delivery of `delivery_ids`; returns the number of
        messages. When it raises, some may have been queued: an attempt of a delivery that is
        not due any more does nothing."""
        messages = delivery_messages(delivery_ids)
        with self.translated():
            self.enqueue_many(messages)
        return len(messages)

    @abc.abstractmethod
    def ping(self) -> None:
        """Check that the broker answers (readiness, and the dashboard before it acts)."""

    @abc.abstractmethod
    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        """{state: messages} for `queue` (see `STATES`; a state this broker cannot tell is
        left out)."""

    @abc.abstractmethod
    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        """Transfer id -> the broker's ids of the messages in `queue`'s dead-letter queue
        that carry it. The ids are only good for `discard_dead_letters`."""

    @abc.abstractmethod
    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        """Drop the messages with these ids (from `dead_letters`) from the dead-letter
        queue; ids no longer there are ignored."""

    def drop_cleared_dead_letters(
        self, dead_lettered: StillDeadLettered, queue: str = TRANSFER_QUEUE
    ) -> int:
        """Drop every message of `queue`'s dead-letter queue none of whose transfers is
        dead-lettered any more (retried, cancelled, settled, or never marked); return how
        many were dropped. `dead_lettered(ids)` answers which of `ids` still are (Postgres
        is the record); a message carrying one of those is kept. Raises what
        `dead_lettered` raises, besides `BrokerUnavailable`."""
        carried: dict[str, set[int]] = {}
        for tid, message_ids in self.dead_letters(queue).items():
            for mid in message_ids:
                carried.setdefault(mid, set()).add(tid)
        if not carried:
            return 0
        still = set(dead_lettered(sorted(set().union(*carried.values()))))
        cleared = [mid for mid, tids in carried.items() if not tids & still]
        self.discard_dead_letters(cleared, queue)
        return len(cleared)

    @abc.abstractmethod
    def beat(self) -> None:
        """One beat of a worker process's heartbeat, every `HEARTBEAT_INTERVAL` seconds
        (`worker.middleware.Heartbeat`): what this broker needs so that the messages a dead
        worker held go back on their queue."""
