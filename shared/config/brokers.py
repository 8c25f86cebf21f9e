"""Which broker a URL names: the URL schemes Settle's brokers answer to. Imports nothing of a
broker's client, so that reading the settings stays light."""

from __future__ import annotations

from shared.errors import InvalidSetting

#: URL schemes of the message brokers Settle runs on, by broker name.
BROKER_SCHEMES = {
    "redis": ("redis", "rediss", "unix"),
    "rabbitmq": ("amqp", "amqps"),
}

#: How each broker is named in a line an operator reads.
TITLES = {"redis": "Redis", "rabbitmq": "RabbitMQ"}


def broker_name(url: str) -> str:
    """The broker a URL names, "redis" or "rabbitmq". Raises `InvalidSetting` for any other
    scheme."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    for name, schemes in BROKER_SCHEMES.items():
        if scheme in schemes:
            return name
    known = ", ".join(f"{s}://" for schemes in BROKER_SCHEMES.values() for s in schemes)
    raise InvalidSetting(f"BROKER_URL must start with one of {known}")
