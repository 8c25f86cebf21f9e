"""The token bucket's arithmetic, on a clock the test turns: tokens come back at the rate, a
full bucket allows the burst, a share divides a limit, and the limiter's fail-open pause."""

from __future__ import annotations

import logging
import re

import pytest

from shared.config import Settings
from shared.errors import InvalidSetting, RateLimitStoreUnavailable
from shared.ratelimit.buckets import (
    PAUSE,
    Decision,
    Limiter,
    LocalBuckets,
    RedisBuckets,
    create_limiter,
)
from shared.ratelimit.limits import Limit, parse_burst, parse_rate


class Clock:
    def __init__(self) -> None:
        self.us = 1_000_000_000

    def __call__(self) -> int:
        return self.us

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1_000_000)


def test_a_full_bucket_allows_the_burst_then_one_request_per_interval() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock_us=clock)
    limit = Limit(rate=2, burst=3)  # a token every 0.5 s
    taken = [buckets.take(1, limit) for _ in range(4)]
    assert [d.allowed for d in taken] == [True, True, True, False]
    assert [d.remaining for d in taken] == [2, 1, 0, 0]
    assert taken[-1].retry_after == 1  # 0.5 s, rounded up to whole seconds
    clock.advance(0.49)
    assert not buckets.take(1, limit).allowed
    clock.advance(0.01)
    assert buckets.take(1, limit) == Decision(True, limit, 0, 1, 0)
    clock.advance(10)  # long idle: full again, never more than the burst
    assert [buckets.take(1, limit).allowed for _ in range(4)] == [True, True, True, False]


def test_keys_and_limits_have_buckets_of_their_own() -> None:
    buckets = LocalBuckets(clock_us=Clock())
    one = Limit(rate=0.01, burst=1)
    assert buckets.take(1, one).allowed and not buckets.take(1, one).allowed
    assert buckets.take(2, one).allowed  # another key
    assert buckets.take(1, Limit(rate=0.01, burst=2, name="key")).allowed  # a new limit


def test_a_refused_request_takes_no_token() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock_us=clock)
    limit = Limit(rate=1, burst=1)
    assert buckets.take(1, limit).allowed
    for _ in range(100):
        assert not buckets.take(1, limit).allowed
    clock.advance(1)
    assert buckets.take(1, limit).allowed


def test_a_share_divides_the_rate_and_the_burst_keeping_at_least_one() -> None:
    assert Limit(100, 200).share(4) == Limit(25, 50)
    assert Limit(100, 3).share(4) == Limit(25, 1)
    assert Limit(100, 200).share(1) == Limit(100, 200)
    clock = Clock()
    buckets = LocalBuckets(4, clock_us=clock)
    assert [buckets.take(1, Limit(100, 8)).allowed for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    ("limit", "interval_us", "window"),
    [
        (Limit(100, 200), 10_000, 2),
        (Limit(3, 10), 333_334, 4),  # rounded so that no more than 3 a second are allowed
        (Limit(1_000_000, 1), 1, 1),
        (Limit(0.001, 1), 1_000_000_000, 1000),
    ],
)
def test_the_interval_and_window_round_against_the_client(
    limit: Limit, interval_us: int, window: int
) -> None:
    assert limit.interval_us == interval_us
    assert limit.window == window


def test_the_oldest_full_buckets_are_dropped_when_too_many_keys_are_remembered() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock_us=clock, max_entries=3)
    limit = Limit(rate=1, burst=1)
    for key in range(3):
        buckets.take(key, limit)
    clock.advance(2)  # all three full again
    buckets.take(99, limit)
    assert len(buckets._tats) == 1


@pytest.mark.parametrize(
    ("text", "rate"), [("10", 10.0), (" 0.5 ", 0.5), ("default", None), ("DEFAULT", None)]
)
def test_rates_an_operator_types(text: str, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e9", "x", "", "1/s"])
def test_rates_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--rate"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["0", "1.5", "1000001", "many", ""])
def test_bursts_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--burst"):
        parse_burst(text)


class FailingBuckets:
    """Buckets whose store is down until `up` is set; counts the calls that reached it."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def take(self, key_id: int, limit: Limit) -> Decision:
        self.calls += 1
        if not self.up:
            raise RateLimitStoreUnavailable("Redis: Connection refused")
        return Decision(True, limit, 0, 1, 0)

    def close(self) -> None:
        pass


def test_while_the_store_fails_requests_pass_unchecked_and_it_is_asked_once_per_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    store = FailingBuckets()
    unchecked: list[int] = []
    limiter = Limiter(
        store,
        Limit(1, 1),
        default_burst=1,
        on_unchecked=lambda: unchecked.append(1),
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.INFO, logger="shared.ratelimit.buckets"):
        for _ in range(50):
            assert limiter.check(7) is None
        assert (store.calls, len(unchecked)) == (1, 50)
        now[0] += PAUSE
        assert limiter.check(7) is None
        assert store.calls == 2  # asked again once the pause is over, and still down
        store.up = True
        now[0] += PAUSE
        decision = limiter.check(7)
        assert decision is not None and decision.allowed
    messages = [r.getMessage() for r in caplog.records]
    assert sum("rate limits unchecked" in m for m in messages) == 1
    assert sum("checked again" in m for m in messages) == 1


def test_a_key_without_a_limit_is_not_checked() -> None:
    store = FailingBuckets()
    limiter = Limiter(store, None, default_burst=5)
    assert limiter.check(7) is None
    assert store.calls == 0
    assert limiter.limit_for(2.0, None) == Limit(2.0, 5, "key")
    assert limiter.limit_for(None, 9) is None  # a burst alone has no rate to refill at


def test_a_web_process_keeps_buckets_in_redis_or_on_rabbitmq_its_share_in_memory() -> None:
    on_redis = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    limiter = create_limiter(on_redis)
    try:
        assert isinstance(limiter.buckets, RedisBuckets)
        assert limiter.default == Limit(100.0, 200)
    finally:
        limiter.close()
    on_rabbitmq = Settings.from_env(
        {
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "WEB_PROCESSES": "3",
            "WEB_INSTANCES": "2",
            "RATE_LIMIT_PER_SECOND": "0",
        }
    )
    local = create_limiter(on_rabbitmq)
    assert isinstance(local.buckets, LocalBuckets) and local.buckets.parts == 6
    assert local.default is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RATE_LIMIT_PER_SECOND": "0.0001"}, "must be 0 (no default limit) or at least 0.001"),
        ({"RATE_LIMIT_PER_SECOND": "-1"}, "RATE_LIMIT_PER_SECOND"),
        ({"RATE_LIMIT_PER_SECOND": "2000000"}, "RATE_LIMIT_PER_SECOND"),
        ({"RATE_LIMIT_PER_SECOND": "fast"}, "RATE_LIMIT_PER_SECOND"),
        ({"RATE_LIMIT_BURST": "0"}, "RATE_LIMIT_BURST"),
        ({"RATE_LIMIT_BURST": "1.5"}, "RATE_LIMIT_BURST"),
    ],
)
def test_a_bad_rate_limit_setting_is_refused_naming_it(env: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidSetting, match=re.escape(says)):
        Settings.from_env(env)
