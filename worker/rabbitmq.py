"""Settle on RabbitMQ: dramatiq's RabbitMQ broker as Settle builds it, and
`BrokerOperations` on it.

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

Dead letters: dramatiq has RabbitMQ route a rejected message to `<queue>.XQ` (kept seven
days). AMQP has no way to read a queue without taking its messages, so listing takes every
dead message unacknowledged on a channel of its own and closes that channel, which puts
them all back; discarding acknowledges the chosen ones on the way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware

from shared.runtime.brokers import rabbitmq_parameters
from shared.runtime.queues import rabbitmq_queue_counts
from worker.queues import TRANSFER_QUEUE, BrokerUnreachable, DropsDeadLettersOf, transfer_ids

#: What pika raises when RabbitMQ is unreachable, refuses, or drops a connection or channel.
AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)


def create_rabbitmq_broker(url: str, middleware: list[Middleware]) -> RabbitmqBroker:
    """dramatiq's RabbitMQ broker on `url` with publisher confirms and bounded timeouts.
    Connects lazily (per thread, on first use)."""
    # pika logs each connection it opens and closes at INFO: one per thread that publishes,
    # and again after every reconnect. Its warnings and errors still show.
    logging.getLogger("pika").setLevel(logging.WARNING)
    broker = RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    broker.parameters = rabbitmq_parameters(url)
    return broker


class RabbitmqOperations(DropsDeadLettersOf):
    """Queue depths (`shared.runtime.queues.rabbitmq_queue_counts`), dead letters and ping on
    a RabbitMQ broker, each on a short connection of its own (never the broker's per-thread
    ones, which its publishing owns)."""

    name = "rabbitmq"

    def __init__(self, broker: RabbitmqBroker) -> None:
        self._parameters: Any = broker.parameters

    @contextmanager
    def _channel(self) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
        try:
            connection = pika.BlockingConnection(self._parameters)
        except AMQP_ERRORS as exc:
            raise BrokerUnreachable(f"RabbitMQ: {exc or type(exc).__name__}") from exc
        try:
            yield connection.channel()
        except AMQP_ERRORS as exc:
            raise BrokerUnreachable(f"RabbitMQ: {exc or type(exc).__name__}") from exc
        finally:
            # Closing is best effort: unacked messages go back either way.
            if connection.is_open:
                with suppress(*AMQP_ERRORS):
                    connection.close()

    def ping(self) -> None:
        with self._channel():
            pass

    def depths(self, queue: str = TRANSFER_QUEUE) -> dict[str, int]:
        try:
            return rabbitmq_queue_counts(self._parameters, queue)
        except AMQP_ERRORS as exc:
            raise BrokerUnreachable(f"RabbitMQ: {exc or type(exc).__name__}") from exc

    def dead_letters(self, queue: str = TRANSFER_QUEUE) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        with self._channel() as channel:
            for _tag, message in _take_all(channel, xq_name(queue)):
                for tid in transfer_ids(message):
                    found.setdefault(tid, []).append(message.message_id)
        return found

    def discard_dead_letters(self, ids: Iterable[str], queue: str = TRANSFER_QUEUE) -> None:
        wanted = set(ids)
        if not wanted:
            return
        with self._channel() as channel:
            for tag, message in _take_all(channel, xq_name(queue)):
                if message.message_id in wanted:
                    channel.basic_ack(tag)
            # The others go back when the channel closes.

    def beat(self) -> None:
        """Nothing to do: RabbitMQ redelivers a dead consumer's messages by itself."""


def _take_all(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> Iterator[tuple[int, Message]]:
    """Every message of `queue`, taken unacknowledged: (delivery tag, message). A message
    that does not decode is skipped (and goes back with the others)."""
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
            message = Message.decode(body)
        except DecodeError:
            continue
        yield method.delivery_tag, message
