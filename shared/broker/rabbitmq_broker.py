"""Settle on RabbitMQ: dramatiq's RabbitMQ broker as Settle builds it (`create`), and
Settle's operations on it, each on a short connection of its own (never the broker's
per-thread ones, which its publishing owns).

The broker publishes with confirms (`confirm_delivery=True`): a send returns only once
RabbitMQ has taken the message, as a Redis `RPUSH` does, so web answers 202 for a queued
transfer and 503 `broker_unavailable` for one that was not. Queues are durable and messages
persistent. Queue names carry no prefix: each deployment (or test run) isolates itself
with a vhost of its own, named in the URL (`amqp://user:password@host:5672/settle`).

A worker that dies mid-message needs no heartbeat of Settle's: RabbitMQ puts back every
message a consumer had not acknowledged as soon as its connection closes, which a kill -9
does at once (the kernel closes the socket). A host lost without closing its sockets is
noticed at AMQP's heartbeat timeout (the server's, 60 s by default), and its messages
come back then.

Depths come from a passive declare of `q`, `q.DQ` and `q.XQ`: each answers the messages
ready in it. AMQP does not tell how many a consumer holds unacknowledged, so `in_flight` is
not reported, and `delayed` counts only the delayed messages no worker has fetched yet (a
worker holds a retry until its time comes).

Dead letters: dramatiq has RabbitMQ route a rejected message to `<queue>.XQ` (kept seven
days). AMQP has no way to read a queue without taking its messages, so listing takes every
dead message unacknowledged on a channel of its own and closes that channel, which puts
them all back; discarding acknowledges the chosen ones on the way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import ClassVar

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from shared.broker.base import SettleBroker, StillDeadLettered
from shared.broker.messages import TRANSFER_QUEUE, decode, transfer_ids

#: Seconds to wait for RabbitMQ to accept a connection or answer on it, and for a blocked
#: (memory or disk alarm) connection before giving up on a publish.
RABBITMQ_TIMEOUT = 5.0
RABBITMQ_BLOCKED_TIMEOUT = 10.0

#: What pika raises when RabbitMQ is unreachable, refuses, or drops a connection or channel.
AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)


def rabbitmq_parameters(url: str, *, timeout: float = RABBITMQ_TIMEOUT) -> pika.URLParameters:
    """pika's parameters for `url` (`amqp://user:password@host:port/vhost`), with bounded
    connect, socket and blocked-connection timeouts, so that a RabbitMQ that stops answering
    is an error rather than a hang. Raises `ValueError` for a malformed URL."""
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout * 2
    parameters.blocked_connection_timeout = RABBITMQ_BLOCKED_TIMEOUT
    parameters.connection_attempts = 1
    return parameters


@contextlib.contextmanager
def quiet_pika() -> Iterator[None]:
    """pika logs every step of a connection it opens or closes (a failed one up to ERROR,
    before it raises); a boot check reports in one line of its own, so pika is silenced
    meanwhile."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


class SettleRabbitmqBroker(SettleBroker, RabbitmqBroker):
    """dramatiq's RabbitMQ broker on `url` with publisher confirms and bounded timeouts, and
    Settle's operations. Connects lazily (per thread, on first use)."""

    name: ClassVar[str] = "rabbitmq"
    client_errors: ClassVar[tuple[type[BaseException], ...]] = AMQP_ERRORS

    def __init__(self, *, url: str, middleware: list[Middleware] | None = None) -> None:
        super().__init__(url=url, confirm_delivery=True, middleware=middleware)
        self.parameters = rabbitmq_parameters(url)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[BlockingConnection]:
        with self.translated():
            connection = pika.BlockingConnection(self.parameters)
            try:
                yield connection
            finally:
                # Closing is best effort: unacked messages go back either way.
                if connection.is_open:
                    with contextlib.suppress(*AMQP_ERRORS):
                        connection.close()

    def ping(self) -> None:
        with self._connection():
            pass

    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        # A queue never declared counts zero.
        counts: dict[str, int] = {}
        with self._connection() as connection:
            channel = connection.channel()
            for state, name in (
                ("ready", queue),
                ("delayed", dq_name(queue)),
                ("dead", xq_name(queue)),
            ):
                if not channel.is_open:  # a 404 closes the channel
                    channel = connection.channel()
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                    counts[state] = int(declared.method.message_count)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    counts[state] = 0
        return counts

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        with self._connection() as connection:
            for _tag, message_id, ids in _take_all(connection.channel(), xq_name(queue)):
                for tid in ids:
                    found.setdefault(tid, []).append(message_id)
        return found

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        wanted = set(ids)
        if not wanted:
            return
        with self._connection() as connection:
            channel = connection.channel()
            for tag, message_id, _ids in _take_all(channel, xq_name(queue)):
                if message_id in wanted:
                    channel.basic_ack(tag)
            # The others go back when the channel closes.

    def drop_cleared_dead_letters(
        self, dead_lettered: StillDeadLettered, queue: str = TRANSFER_QUEUE
    ) -> int:
        # One pass over the queue rather than two (each takes every message and puts back
        # what it keeps): take them all, ack the cleared ones, the others go back on close.
        with self._connection() as connection:
            channel = connection.channel()
            taken = list(_take_all(channel, xq_name(queue)))
            if not taken:
                return 0
            still = set(dead_lettered(sorted({tid for _, _, ids in taken for tid in ids})))
            cleared = [tag for tag, _mid, ids in taken if not set(ids) & still]
            for tag in cleared:
                channel.basic_ack(tag)
        return len(cleared)

    def beat(self) -> None:
        """Nothing to do: RabbitMQ redelivers a dead consumer's messages by itself."""


def _take_all(channel: BlockingChannel, queue: str) -> Iterator[tuple[int, str, list[int]]]:
    """Every settle message of `queue`, taken unacknowledged: (delivery tag, message id,
    transfer ids). A message that is not a settle message is skipped (and goes back with the
    others)."""
    try:
        channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return  # never declared: empty
        raise
    while True:
        method, _properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            return
        try:
            message = decode(body)
            ids = transfer_ids(message)
        except (DecodeError, ValueError):
            continue
        yield method.delivery_tag, message.message_id, ids


def create(url: str, *, middleware: list[Middleware]) -> SettleRabbitmqBroker:
    """The broker on the RabbitMQ vhost `url` names. Connects lazily."""
    # pika logs each connection it opens and closes at INFO: one per thread that publishes,
    # and again after every reconnect. Its warnings and errors still show.
    logging.getLogger("pika").setLevel(logging.WARNING)
    return SettleRabbitmqBroker(url=url, middleware=middleware)
