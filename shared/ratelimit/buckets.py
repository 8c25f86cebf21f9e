"""Token buckets per API key, and the `Limiter` the web asks once per request.

The bucket is kept as GCRA does it (the generic cell rate algorithm, a token bucket written
as one number): the time at which the bucket will be full again, `tat`. A request costs one
interval (1/rate); it is refused when it would push `tat` more than `burst` intervals past
now. All in integer microseconds, so that the arithmetic is exact in Redis's Lua (whose
numbers are doubles) as in Python.

A bucket is named by the key's id and its limit, so that a key whose limit changes (`settle
keys update`) starts with a full bucket of its new limit rather than owing the old one's debt
(a GCRA time past now, counted in the old intervals, would keep a key just raised from 0.01
to 1000 a second refused for minutes); the old bucket expires on its own.

- `RedisBuckets`: one key per API key and limit in the broker's Redis,
  `<namespace>:ratelimit:<id>:<interval>:<burst>`,
  read and written by one Lua script (atomic; one round trip, EVALSHA) on Redis's own clock
  (`TIME`), so every web process on every host draws from one bucket whatever the hosts'
  clocks say. The key expires when its bucket would be full. The client is redis-py's,
  whose connection pool is safe to share between waitress's threads; its timeouts are short
  and it does not retry: a Redis that does not answer makes the check fail, not wait.
- `LocalBuckets`: the same buckets in this process's memory, for a service on RabbitMQ,
  where no Redis is shared. Each web process enforces its share of every limit
  (`Limit.share`: the rate and the burst divided by the web processes of all hosts), so a
  key spread evenly over the processes gets about its limit, and one that reaches a single
  process gets that process's share only.
- `Limiter`: the limit of a key (its own, else the settings'), the bucket's decision, and
  what happens when Redis fails: the request goes through unchecked (fail open), a warning
  is logged (once, then at most once a minute while it lasts), `on_unchecked` is called for
  each request let through so (the web counts them), and Redis is not asked again for
  `PAUSE` seconds, so an outage costs no timeout per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.config import Settings
from shared.errors import RateLimitStoreUnavailable, first_line
from shared.ratelimit.limits import Limit

log = logging.getLogger(__name__)

#: Seconds a Redis command of the limiter may take (connecting included) before the check
#: fails open.
TIMEOUT = 0.25
#: Seconds after a failure during which Redis is not asked and requests go through unchecked.
PAUSE = 1.0
#: Seconds between two warnings while the checks keep failing.
WARN_EVERY = 60.0

#: KEYS[1] the bucket; ARGV[1] microseconds per token, ARGV[2] the burst, ARGV[3] requests
#: already answered from a local allowance (`RedisBuckets`), charged before this one is
#: decided. Returns {1, backlog} when the request is allowed, {0, backlog} when it is not,
#: backlog being how far `tat` is past now (after this request when allowed): the caller
#: derives what is left from it. redis.call('GET') answers false for a missing key; Lua
#: formats big numbers with an exponent, hence '%.0f' to store the microseconds exactly.
SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local owed = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
tat = tat + owed * interval
local backlog = tat - now + interval
if backlog > burst * interval then
  if owed > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat),
      'PX', math.ceil((tat - now) / 1000) + 1)
  end
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', now + backlog),
  'PX', math.ceil(backlog / 1000) + 1)
return {1, backlog}
"""

#: A local allowance (`RedisBuckets`) never covers more requests than this, nor lasts
#: longer than `ALLOWANCE_SECONDS` after the answer it was drawn from.
MAX_ALLOWANCE = 100
ALLOWANCE_SECONDS = 0.5


@dataclass(frozen=True)
class Decision:
    """A bucket's answer: `allowed` or not, under `limit`; `remaining` requests it would
    allow at once after this one; `reset` whole seconds until it holds one more;
    `retry_after` whole seconds until a refused request would be allowed (0 when allowed)."""

    allowed: bool
    limit: Limit
    remaining: int
    reset: int
    retry_after: int


def _seconds(microseconds: int) -> int:
    """Whole seconds, rounded up."""
    return -(-microseconds // 1_000_000)


def decide(limit: Limit, allowed: bool, backlog_us: int) -> Decision:
    """The decision of a bucket of `limit` whose full time lies `backlog_us` past now (after
    the request when it was `allowed`)."""
    interval = limit.interval_us
    if not allowed:
        wait = backlog_us + interval - limit.burst * interval
        return Decision(False, limit, 0, _seconds(wait), max(1, _seconds(wait)))
    remaining = (limit.burst * interval - backlog_us) // interval
    # An allowed request leaves the bucket short of at least its own token (backlog_us >=
    # interval): one more comes when the backlog falls to the next multiple of an interval.
    return Decision(True, limit, remaining, _seconds(backlog_us % interval or interval), 0)


class Buckets(Protocol):
    def take(self, key_id: int, limit: Limit) -> Decision:
        """Take one token of key `key_id`'s bucket under `limit`, or refuse. Raises
        `RateLimitStoreUnavailable` when the store cannot answer."""
        ...

    def close(self) -> None: ...


def redis_client(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """A client for the limiter's Redis at `url`: short timeouts, no retries (a failed check
    lets the request through; a retry would only hold the thread). Connects lazily."""
    return redis.Redis.from_url(
        url,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )


@dataclass
class _Allowance:
    """What a process may still answer for one bucket without asking Redis (`left`), until
    when (`until`, monotonic seconds), what it answered so (`owed`, charged at the next
    round trip), and the last answer's figures for the headers."""

    left: int
    until: float
    owed: int
    remaining: int
    reset: int


class RedisBuckets:
    """Buckets in Redis under `<namespace>:ratelimit:<key id>:<interval>:<burst>`, shared by
    every process that uses the same Redis and namespace. Safe to share between threads.

    A round trip per request costs a web process about as much CPU as the rest of a cached
    read, so a key far from its limit is not asked about every time: when Redis answers that
    `r` requests are left, this process may answer the next r / (2 x `parts`) requests of the
    key itself (at most `MAX_ALLOWANCE`, within `ALLOWANCE_SECONDS`), `parts` being the
    web processes of every host, and charges them to the bucket with its next round trip.
    All the processes together can so answer at most half of what was left, so a key is
    never let past its limit; as it nears the limit the allowance shrinks to nothing and
    every request is decided by Redis, exactly. The headers of a request answered from an
    allowance count down from Redis's last answer."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        parts: int = 1,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._client = client
        self._prefix = f"{namespace}:ratelimit:"
        self._script = client.register_script(SCRIPT)
        self._share = 2 * max(1, parts)
        self._clock = clock
        self._max_entries = max_entries
        self._allowances: dict[tuple[int, int, int], _Allowance] = {}
        self._lock = threading.Lock()

    def key(self, key_id: int, limit: Limit) -> str:
        """The Redis key of `key_id`'s bucket under `limit`."""
        return f"{self._prefix}{key_id}:{limit.interval_us}:{limit.burst}"

    def take(self, key_id: int, limit: Limit) -> Decision:
        interval = limit.interval_us
        bucket = (key_id, interval, limit.burst)
        with self._lock:
            found = self._allowances.get(bucket)
            if found is not None and found.left > 0 and self._clock() < found.until:
                found.left -= 1
                found.owed += 1
                found.remaining = max(0, found.remaining - 1)
                return Decision(True, limit, found.remaining, found.reset, 0)
            owed = 0
            if found is not None:  # spent or expired: what it answered goes with this trip
                owed, found.owed, found.left = found.owed, 0, 0
        try:
            allowed, backlog = self._script(
                keys=[f"{self._prefix}{key_id}:{interval}:{limit.burst}"],
                args=[interval, limit.burst, owed],
            )
        except redis.RedisError as exc:
            raise RateLimitStoreUnavailable(f"Redis: {first_line(exc)}") from exc
        decision = decide(limit, allowed == 1, int(backlog))
        self._allow(bucket, decision)
        return decision

    def _allow(self, bucket: tuple[int, int, int], decision: Decision) -> None:
        left = min(MAX_ALLOWANCE, decision.remaining // self._share) if decision.allowed else 0
        with self._lock:
            found = self._allowances.get(bucket)
            if left == 0 and found is None:
                return
            if found is None and len(self._allowances) >= self._max_entries:
                self._allowances.clear()  # a miss costs a round trip, not a wrong answer
            # Requests answered meanwhile by another thread's allowance stay owed.
            owed = 0 if found is None else found.owed
            self._allowances[bucket] = _Allowance(
                left, self._clock() + ALLOWANCE_SECONDS, owed, decision.remaining, decision.reset
            )

    def close(self) -> None:
        self._client.close()


class LocalBuckets:
    """Buckets in this process's memory, each enforcing `limit.share(parts)` (see the module's
    docstring). At most `max_entries` keys are remembered: beyond them the buckets of keys
    idle long enough to be full are dropped (a full bucket is the same as none), and all of
    them if that is not enough. Safe to share between threads."""

    def __init__(
        self,
        parts: int = 1,
        *,
        max_entries: int = 10_000,
        clock_us: Callable[[], int] = lambda: time.monotonic_ns() // 1000,
    ) -> None:
        self.parts = max(1, parts)
        self._clock_us = clock_us
        self._max_entries = max_entries
        self._tats: dict[tuple[int, int, int], int] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int, limit: Limit) -> Decision:
        limit = limit.share(self.parts)
        interval = limit.interval_us
        bucket = (key_id, interval, limit.burst)
        with self._lock:
            now = self._clock_us()
            tat = max(self._tats.get(bucket, now), now)
            backlog = tat - now + interval
            if backlog > limit.burst * interval:
                return decide(limit, False, tat - now)
            if bucket not in self._tats and len(self._tats) >= self._max_entries:
                self._sweep(now)
            self._tats[bucket] = now + backlog
        return decide(limit, True, backlog)

    def _sweep(self, now: int) -> None:
        for bucket, tat in list(self._tats.items()):
            if tat <= now:
                del self._tats[bucket]
        if len(self._tats) >= self._max_entries:
            self._tats.clear()

    def close(self) -> None:
        pass


class Limiter:
    """The rate limit of API keys: `check` once per request. A key's own rate or burst
    (`api_keys.rate_per_second`, `rate_burst`) overrides the default's; with no default
    (`default` None: RATE_LIMIT_PER_SECOND=0) a key without a rate of its own is not
    limited. Failing open is described in the module's docstring. Safe to share between
    threads."""

    def __init__(
        self,
        buckets: Buckets,
        default: Limit | None,
        *,
        default_burst: int,
        on_unchecked: Callable[[], Any] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = buckets
        self.default = default
        self._default_burst = default_burst
        self._on_unchecked = on_unchecked
        self._clock = clock
        self._paused_until = 0.0
        self._failing_since: float | None = None
        self._warned_at = 0.0

    def limit_for(self, rate: float | None, burst: int | None) -> Limit | None:
        """The limit of a key whose own values are `rate` and `burst` (None: the default's)."""
        if rate is None and burst is None:
            return self.default
        if rate is None:
            if self.default is None:
                return None
            rate = self.default.rate
        return Limit(rate, self._default_burst if burst is None else burst, "key")

    def check(
        self, key_id: int, rate: float | None = None, burst: int | None = None
    ) -> Decision | None:
        """The decision for one request of key `key_id` (whose own values are `rate` and
        `burst`); None when the key is not limited, or when the buckets cannot answer (the
        request goes through: see the module's docstring)."""
        limit = self.limit_for(rate, burst)
        if limit is None:
            return None
        if self._paused_until and self._clock() < self._paused_until:
            self._on_unchecked()
            return None
        try:
            decision = self.buckets.take(key_id, limit)
        except RateLimitStoreUnavailable as exc:
            self._failed(exc)
            self._on_unchecked()
            return None
        if self._failing_since is not None:
            self._recovered()
        return decision

    def _failed(self, exc: RateLimitStoreUnavailable) -> None:
        now = self._clock()
        self._paused_until = now + PAUSE
        if self._failing_since is None:
            self._failing_since = now
        if now - self._warned_at >= WARN_EVERY or self._warned_at == 0.0:
            self._warned_at = now
            log.warning(
                "rate limits unchecked since %.0fs: %s; requests go through without a limit"
                " (trying again every %gs)",
                now - self._failing_since,
                exc.message,
                PAUSE,
            )

    def _recovered(self) -> None:
        since = self._failing_since
        self._failing_since = None
        self._paused_until = 0.0
        self._warned_at = 0.0
        if since is not None:
            log.info("rate limits checked again after %.0fs unchecked", self._clock() - since)

    def close(self) -> None:
        self.buckets.close()


def create_limiter(
    settings: Settings, *, on_unchecked: Callable[[], Any] = lambda: None
) -> Limiter:
    """The limiter of a web process: buckets in the broker's Redis when the broker is Redis,
    else in the process (its share of WEB_PROCESSES x WEB_INSTANCES); the default limit from
    RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST. Connects lazily: call it after the fork."""
    default = (
        Limit(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.rate_limit_per_second
        else None
    )
    buckets: Buckets
    if settings.broker == "redis":
        client = redis_client(settings.message_broker_url, max_connections=settings.web_threads)
        buckets = RedisBuckets(
            client,
            settings.broker_namespace,
            parts=settings.web_processes * settings.web_instances,
        )
    else:
        buckets = LocalBuckets(settings.web_processes * settings.web_instances)
    return Limiter(
        buckets, default, default_burst=settings.rate_limit_burst, on_unchecked=on_unchecked
    )
