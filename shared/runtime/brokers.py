"""Reaching the message broker from `shared/`: the boot check of whichever broker
`Settings.message_broker_url` names (Redis `PING`, or opening and closing an AMQP connection
to RabbitMQ), and the connection parameters every RabbitMQ client of Settle uses.

Nothing here connects at import time; each check opens one connection and closes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pika
import pika.exceptions

from shared.db.pool import check_redis, redact
from shared.errors import DependencyDown
from shared.runtime.settings import Settings

#: Seconds to wait for RabbitMQ to accept a connection or answer on it, and for a blocked
#: (memory or disk alarm) connection before giving up on a publish.
RABBITMQ_TIMEOUT = 5.0
RABBITMQ_BLOCKED_TIMEOUT = 10.0


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


def check_rabbitmq(url: str, *, timeout: float = RABBITMQ_TIMEOUT) -> None:
    """Boot check: open an AMQP connection (which authenticates and opens the vhost) and
    close it. Raises `DependencyDown` with one line."""
    with quiet_pika():
        try:
            connection = pika.BlockingConnection(rabbitmq_parameters(url, timeout=timeout))
        except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise DependencyDown(f"RabbitMQ unreachable at {redact(url)}: {reason}") from None
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()  # it answered: that is all a boot check asks


def check_broker(settings: Settings) -> None:
    """Boot check of the broker in use. Raises `DependencyDown` with one line naming it."""
    if settings.broker == "rabbitmq":
        check_rabbitmq(settings.message_broker_url)
    else:
        check_redis(settings.message_broker_url)
