"""BROKER_URL picks the broker every process checks at boot: an unreachable one ends the
process with one line naming it and exit code 1, a URL of another kind with exit code 2."""

from __future__ import annotations

import os

import pytest

from shared.errors import InvalidSetting
from shared.runtime.settings import Settings
from tests.scratch import settle


def test_broker_url_defaults_to_redis_url_and_amqp_selects_rabbitmq() -> None:
    redis_only = Settings.from_env({"REDIS_URL": "redis://10.0.0.9:6379/3"})
    rabbit = Settings.from_env(
        {"REDIS_URL": "redis://10.0.0.9:6379/3", "BROKER_URL": "amqp://u:p@mq:5672/settle"}
    )

    assert (redis_only.message_broker_url, redis_only.broker) == (
        "redis://10.0.0.9:6379/3",
        "redis",
    )
    assert (rabbit.message_broker_url, rabbit.broker) == ("amqp://u:p@mq:5672/settle", "rabbitmq")


def test_a_broker_url_of_another_kind_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidSetting, match="BROKER_URL must start with one of"):
        Settings.from_env({"BROKER_URL": "kafka://127.0.0.1:9092"})
    done = settle("sweeper", env={**os.environ, "BROKER_URL": "kafka://127.0.0.1:9092"})
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "settle sweeper: BROKER_URL must start with one of redis://, rediss://, unix://,"
        " amqp://, amqps://"
    ]


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://127.0.0.1:1/0", "Redis unreachable at redis://127.0.0.1:1/0"),
        (
            "amqp://guest:guest@127.0.0.1:1/",
            "RabbitMQ unreachable at amqp://guest:***@127.0.0.1:1/",
        ),
    ],
)
def test_a_process_whose_broker_is_unreachable_exits_1_with_one_line_naming_it(
    url: str, named: str
) -> None:
    done = settle("sweeper", env={**os.environ, "BROKER_URL": url})

    assert done.returncode == 1, done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith(f"settle sweeper: {named}: ")


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_a_rabbitmq_vhost_that_does_not_exist_fails_the_boot_check(broker_url: str) -> None:
    missing = broker_url.rsplit("/", 1)[0] + "/no-such-vhost"

    done = settle("sweeper", env={**os.environ, "BROKER_URL": missing})

    assert done.returncode == 1, done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith("settle sweeper: RabbitMQ unreachable at ")
    assert "vhost no-such-vhost not found" in done.stdout
