"""The broker a URL names (`BROKER_URL`, default `REDIS_URL`): dramatiq's Redis broker, or
for `amqp://` its RabbitMQ broker, as `create_broker` builds it for any process, and the
boot check every process runs on it first. Nothing here connects at import time."""

from __future__ import annotations

from dramatiq.middleware import Middleware

from shared.broker import rabbitmq_broker, redis_broker
from shared.broker.base import SettleBroker
from shared.config.brokers import TITLES, broker_name
from shared.db.pool import redact
from shared.errors import BrokerUnavailable, DependencyDown, first_line


def create_broker(url: str, *, namespace: str, middleware: list[Middleware]) -> SettleBroker:
    """The broker at `url` (Redis keys under `namespace`; on RabbitMQ the vhost isolates)
    carrying `middleware`. Connects lazily. Raises `InvalidSetting` for a URL of another
    kind and `ValueError` for a malformed one."""
    if broker_name(url) == "rabbitmq":
        return rabbitmq_broker.create(url, middleware=middleware)
    return redis_broker.create(url, namespace=namespace, middleware=middleware)


def check_broker(url: str) -> None:
    """Boot check: the broker at `url` answers (Redis `PING`; an AMQP connection opened,
    which authenticates and opens the vhost, and closed). Raises `DependencyDown` with one
    line naming it."""
    title = TITLES[broker_name(url)]
    try:
        broker = create_broker(url, namespace="check", middleware=[])
    except ValueError as exc:
        raise DependencyDown(f"{title} unreachable at {redact(url)}: {first_line(exc)}") from None
    try:
        with rabbitmq_broker.quiet_pika():
            broker.ping()
    except BrokerUnavailable as exc:
        reason = first_line(exc.__cause__ or exc)
        raise DependencyDown(f"{title} unreachable at {redact(url)}: {reason}") from None
    finally:
        broker.close()
