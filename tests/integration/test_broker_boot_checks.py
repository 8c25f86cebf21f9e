"""BROKER_URL picks the broker every process checks at boot. An unreachable one ends a
one-shot command with one line naming it and exit code 1; a supervisor (`settle web|worker|
sweeper`) logs that line and tries again with backoff until it answers or a stop comes (then
exit 0). A URL of another kind is refused with exit code 2 by both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import InvalidSetting
from tests.e2e.processes import start
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
def test_a_command_whose_broker_is_unreachable_exits_1_with_one_line_naming_it(
    url: str, named: str
) -> None:
    done = settle("migrate", env={**os.environ, "BROKER_URL": url})

    assert done.returncode == 1, done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith(f"settle migrate: {named}: ")


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
def test_a_supervisor_whose_broker_is_unreachable_keeps_trying_and_stops_cleanly(
    url: str, named: str, tmp_path: Path
) -> None:
    env = {**os.environ, "BROKER_URL": url, "LOG_FORMAT": "text"}
    sweeper = start("sweeper", env, tmp_path)

    sweeper.wait_for_log(f"{named}: ", count=3)
    assert sweeper.log_count("; trying again in 0.5s (attempt 1)") == 1
    assert sweeper.log_count("; trying again in 1.0s (attempt 2)") == 1
    assert sweeper.stop() == 0
    assert sweeper.log_count("sweeping every") == 0


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_a_rabbitmq_vhost_that_does_not_exist_fails_the_boot_check(broker_url: str) -> None:
    missing = broker_url.rsplit("/", 1)[0] + "/no-such-vhost"

    done = settle("migrate", env={**os.environ, "BROKER_URL": missing})

    assert done.returncode == 1, done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith("settle migrate: RabbitMQ unreachable at ")
    assert "vhost no-such-vhost not found" in done.stdout
