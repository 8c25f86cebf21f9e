"""Per-key rate limits on the real app, with buckets in the real Redis (a namespace of the
test's own) or, as on RabbitMQ, in the process: who is refused, what the answers say, a key's
own limit, two apps sharing one bucket, and what happens while Redis is down.

Rates are slow enough (one token every 100 s or more) that no token comes back while a test
runs, so the counts are exact without any assertion on time."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from falcon.testing import Result, TestClient
from prometheus_client import REGISTRY
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import auth
from shared.ledger.auth import PrincipalCache
from shared.ratelimit.buckets import (
    ALLOWANCE_SECONDS,
    MAX_ALLOWANCE,
    PAUSE,
    Buckets,
    Limiter,
    LocalBuckets,
    RedisBuckets,
    redis_client,
)
from shared.ratelimit.limits import Limit
from tests.contract import Recorder
from tests.helpers import make_user
from web.app import create_app
from web.metrics import RATE_LIMIT_UNCHECKED
from web.ratelimit import OverLimit
from web.server import shed_load

SLOW = 0.01  # requests per second: one token every 100 s
BURST = 5


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def user_key(db: psycopg.Connection, **limits: float | int) -> str:
    return auth.create_key(db, user_id=make_user(db), **limits).key  # type: ignore[arg-type]


@pytest.fixture
def redis_buckets(settings: Settings) -> Iterator[RedisBuckets]:
    """Buckets in the suite's Redis under a namespace of this test's own."""
    if settings.broker != "redis":
        pytest.skip("the suite runs on RabbitMQ: no Redis to keep buckets in")
    buckets = RedisBuckets(redis_client(settings.redis_url), f"rl-test-{uuid.uuid4().hex[:8]}")
    yield buckets
    buckets.close()


AppFactory = Callable[[Limiter], TestClient]


@pytest.fixture
def app_with(settings: Settings, pool: ConnectionPool) -> Iterator[AppFactory]:
    """A factory of the real app limited by a given limiter (keys looked up on every request:
    a change of a key's limit applies at once), each answer held to the OpenAPI document."""
    recorders: list[Recorder] = []

    def make(limiter: Limiter) -> TestClient:
        app = create_app(
            settings,
            pool=pool,
            enqueue=lambda transfer_id: None,
            ping_broker=lambda: None,
            keys=PrincipalCache(0),
            limiter=limiter,
        )
        recorder = Recorder(app)
        recorders.append(recorder)
        return TestClient(recorder)

    yield make
    violations = [v for r in recorders for v in r.violations]
    assert violations == [], "answers that break the OpenAPI document:\n" + "\n".join(violations)


def limiter(buckets: Buckets, rate: float = SLOW, burst: int = BURST, **kw: object) -> Limiter:
    return Limiter(buckets, Limit(rate, burst), default_burst=burst, **kw)  # type: ignore[arg-type]


def statuses(results: list[Result]) -> list[int]:
    return [r.status_code for r in results]


def test_a_key_flooding_past_its_limit_gets_429s_while_another_key_keeps_every_answer_2xx(
    db: psycopg.Connection, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    client = app_with(limiter(redis_buckets))
    flooder, calm = user_key(db), user_key(db)
    flood: list[Result] = []
    quiet: list[Result] = []
    for _ in range(BURST):  # the calm key asks as often as its limit allows, amid the flood
        flood += [client.simulate_get("/users/me", headers=bearer(flooder)) for _ in range(6)]
        quiet.append(client.simulate_get("/users/me", headers=bearer(calm)))
    assert statuses(quiet) == [200] * BURST
    assert statuses(flood) == [200] * BURST + [429] * (6 * BURST - BURST)
    assert [r.headers["RateLimit"] for r in quiet] == [
        f'"default";r={left};t=100' for left in range(BURST - 1, -1, -1)
    ]
    refused = flood[-1]
    assert refused.json["error"]["code"] == "rate_limited"
    assert "rate limit" in refused.json["error"]["message"]
    # The next token comes in 100 s (the bucket is one interval past empty): say so.
    assert refused.headers["Retry-After"] == "100"
    assert refused.headers["RateLimit-Policy"] == f'"default";q={BURST};w=500'
    assert refused.headers["RateLimit"] == '"default";r=0;t=100'
    allowed = flood[0]
    assert allowed.headers["RateLimit-Policy"] == f'"default";q={BURST};w=500'
    assert allowed.headers["RateLimit"] == f'"default";r={BURST - 1};t=100'


def test_a_refused_request_changes_nothing(
    db: psycopg.Connection, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    client = app_with(limiter(redis_buckets))
    operator = auth.create_key(db, user_id=None, rate=SLOW, burst=1).key
    first = {"email": f"{uuid.uuid4().hex}@example.com", "name": "First"}
    assert client.simulate_post("/users", json=first, headers=bearer(operator)).status_code == 201
    body = {"email": f"{uuid.uuid4().hex}@example.com", "name": "Never made"}
    refused = client.simulate_post("/users", json=body, headers=bearer(operator))
    assert refused.status_code == 429
    found = db.execute("SELECT count(*) FROM users WHERE email = %s", (body["email"],)).fetchone()
    assert found == (0,)


def test_a_keys_own_limit_overrides_the_default_and_a_change_applies_to_the_next_request(
    db: psycopg.Connection, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    client = app_with(limiter(redis_buckets, rate=1000, burst=1000))
    key = auth.create_key(db, user_id=make_user(db), rate=SLOW, burst=2)
    answers = [client.simulate_get("/users/me", headers=bearer(key.key)) for _ in range(4)]
    assert statuses(answers) == [200, 200, 429, 429]
    assert answers[0].headers["RateLimit-Policy"] == '"key";q=2;w=200'
    # A new limit starts with a full bucket of its own: the old one's debt is not carried.
    auth.set_key_limits(db, key.id, burst=3)
    more = [client.simulate_get("/users/me", headers=bearer(key.key)) for _ in range(4)]
    assert statuses(more) == [200, 200, 200, 429]
    assert more[0].headers["RateLimit-Policy"] == '"key";q=3;w=300'
    # Back to the default (1000 a second, burst 1000): a key just refused is served at once.
    auth.set_key_limits(db, key.id, rate=None, burst=None)
    back = client.simulate_get("/users/me", headers=bearer(key.key))
    assert back.status_code == 200
    assert back.headers["RateLimit-Policy"] == '"default";q=1000;w=1'


def test_with_no_default_only_keys_with_a_limit_of_their_own_are_limited(
    db: psycopg.Connection, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    client = app_with(Limiter(redis_buckets, None, default_burst=2))
    free = user_key(db)
    capped = user_key(db, rate=SLOW)  # its burst: the default burst, 2
    assert (
        statuses([client.simulate_get("/users/me", headers=bearer(free)) for _ in range(5)])
        == [200] * 5
    )
    assert "RateLimit" not in client.simulate_get("/users/me", headers=bearer(free)).headers
    answers = [client.simulate_get("/users/me", headers=bearer(capped)) for _ in range(3)]
    assert statuses(answers) == [200, 200, 429]


def test_two_apps_on_one_redis_draw_from_one_bucket_per_key(
    db: psycopg.Connection, settings: Settings, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    # Two processes' worth of everything: each its own client, pool of Redis connections
    # and limiter; only Redis and the namespace are shared.
    namespace = redis_buckets.key(0, Limit(1, 1)).rsplit(":ratelimit:", 1)[0]
    mine = RedisBuckets(redis_client(settings.redis_url), namespace, parts=2)
    other = RedisBuckets(redis_client(settings.redis_url), namespace, parts=2)
    try:
        first, second = app_with(limiter(mine)), app_with(limiter(other))
        key = user_key(db)
        answers = []
        for _ in range(BURST):
            answers.append(first.simulate_get("/users/me", headers=bearer(key)))
            answers.append(second.simulate_get("/users/me", headers=bearer(key)))
    finally:
        mine.close()
        other.close()
    assert statuses(answers).count(200) == BURST
    assert statuses(answers)[BURST:] == [429] * BURST


def test_local_buckets_as_on_rabbitmq_enforce_each_processes_share_of_the_limit(
    db: psycopg.Connection, app_with: AppFactory
) -> None:
    # Two web processes (WEB_PROCESSES=2): each allows half the burst; a key whose requests
    # all reach this process gets that half.
    client = app_with(limiter(LocalBuckets(2), burst=6))
    key = user_key(db)
    answers = [client.simulate_get("/users/me", headers=bearer(key)) for _ in range(5)]
    assert statuses(answers) == [200, 200, 200, 429, 429]
    assert answers[0].headers["RateLimit-Policy"] == '"default";q=3;w=600'
    assert answers[-1].headers["Retry-After"] == "200"  # the share's rate: one per 200 s


def test_while_redis_is_down_requests_go_through_unchecked_with_a_warning_and_a_count(
    db: psycopg.Connection,
    tmp_path: Path,
    app_with: AppFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.faults.servers import DedicatedRedis

    now = [1000.0]
    redis_server = DedicatedRedis(tmp_path / "redis")
    buckets = RedisBuckets(redis_client(redis_server.url), "rl-outage")
    try:
        limited = limiter(
            buckets, burst=2, clock=lambda: now[0], on_unchecked=RATE_LIMIT_UNCHECKED.inc
        )
        client = app_with(limited)
        key = user_key(db)
        before = [client.simulate_get("/users/me", headers=bearer(key)) for _ in range(3)]
        assert statuses(before) == [200, 200, 429]

        redis_server.stop()
        unchecked_before = REGISTRY.get_sample_value("settle_rate_limit_unchecked_total") or 0
        with caplog.at_level(logging.WARNING, logger="shared.ratelimit.buckets"):
            during = [client.simulate_get("/users/me", headers=bearer(key)) for _ in range(4)]
        assert statuses(during) == [200] * 4
        assert all("RateLimit" not in r.headers for r in during)
        warnings = [r for r in caplog.records if "rate limits unchecked" in r.getMessage()]
        assert len(warnings) == 1, "one warning, not one per request"
        unchecked = REGISTRY.get_sample_value("settle_rate_limit_unchecked_total") or 0
        assert unchecked - unchecked_before == 4

        # Redis is back (empty: it keeps nothing on disk) and the pause is over: checked again.
        redis_server.start()
        now[0] += PAUSE
        after = [client.simulate_get("/users/me", headers=bearer(key)) for _ in range(3)]
        assert statuses(after) == [200, 200, 429]
    finally:
        buckets.close()
        redis_server.close()


def test_an_overloaded_process_tells_a_key_over_its_limit_429_and_sheds_the_others_503(
    db: psycopg.Connection, settings: Settings, pool: ConnectionPool, redis_buckets: RedisBuckets
) -> None:
    keys = PrincipalCache(1.0)  # the shedder knows keys from the cache only
    limited = limiter(redis_buckets, burst=1)
    app = create_app(
        settings,
        pool=pool,
        enqueue=lambda transfer_id: None,
        ping_broker=lambda: None,
        keys=keys,
        limiter=limited,
    )
    depth = [0]
    shed = []
    client = TestClient(
        shed_load(
            app,
            lambda: depth[0],
            10,
            over_limit=OverLimit(keys, limited),
            on_limited=lambda: shed.append(1),
        )
    )
    flooder, calm = user_key(db), user_key(db, burst=5)
    for key in (flooder, calm):  # looked up (and cached) while the process keeps up
        assert client.simulate_get("/users/me", headers=bearer(key)).status_code == 200

    depth[0] = 11  # more requests queued than WEB_QUEUE_LIMIT
    refused = client.simulate_get("/users/me", headers=bearer(flooder))
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "100"
    assert refused.headers["RateLimit"] == '"default";r=0;t=100'
    assert shed == [1]
    for headers in (bearer(calm), bearer(user_key(db)), {}):  # within its limit, unknown, none
        answer = client.simulate_get("/users/me", headers=headers)
        assert (answer.status_code, answer.json["error"]["code"]) == (503, "overloaded")
    probe = client.simulate_get("/healthz", headers=bearer(flooder))  # a path without a key
    assert (probe.status_code, probe.json["error"]["code"]) == (503, "overloaded")
    assert shed == [1]


def test_an_error_answered_after_the_check_carries_the_headers_and_took_its_token(
    db: psycopg.Connection, redis_buckets: RedisBuckets, app_with: AppFactory
) -> None:
    client = app_with(limiter(redis_buckets))
    key = user_key(db)
    missing = client.simulate_get("/users/999999999999", headers=bearer(key))
    assert missing.status_code == 404
    assert missing.headers["RateLimit"] == f'"default";r={BURST - 1};t=100'
    bad = client.simulate_post("/accounts", body="{", headers=bearer(key))
    assert bad.status_code in (400, 403, 415)
    assert bad.headers["RateLimit"] == f'"default";r={BURST - 2};t=100'


@pytest.mark.parametrize(
    ("debt_seconds", "allowed", "remaining", "reset", "retry_after"),
    [
        (-100, True, 2, 10, 0),  # idle long ago: a full bucket of 3
        (0, True, 2, 10, 0),  # just full
        (15, True, 0, 5, 0),  # 1.5 tokens owed: one left for this request, the next in 5 s
        (25, False, 0, 5, 5),  # 2.5 owed: none left until 5 s from now
    ],
)
def test_the_script_refills_the_bucket_with_time_on_redis_clock(
    settings: Settings,
    redis_buckets: RedisBuckets,
    debt_seconds: int,
    allowed: bool,
    remaining: int,
    reset: int,
    retry_after: int,
) -> None:
    # One token every 10 s, 3 at most. The bucket is set to owe `debt_seconds` of tokens as
    # of Redis's own clock: the margins are seconds, the script runs within microseconds.
    limit = Limit(0.1, 3)
    client = redis_client(settings.redis_url)
    try:
        seconds, micros = client.time()
        now = seconds * 1_000_000 + micros
        client.set(redis_buckets.key(42, limit), now + debt_seconds * 1_000_000, px=600_000)
    finally:
        client.close()
    decision = redis_buckets.take(42, limit)
    assert (decision.allowed, decision.remaining, decision.reset, decision.retry_after) == (
        allowed,
        remaining,
        reset,
        retry_after,
    )


def test_a_key_far_from_its_limit_is_answered_from_a_local_allowance_then_charged(
    settings: Settings,
) -> None:
    now = [0.0]
    namespace = f"rl-allow-{uuid.uuid4().hex[:8]}"
    buckets = RedisBuckets(redis_client(settings.redis_url), namespace, clock=lambda: now[0])
    client = redis_client(settings.redis_url)
    limit = Limit(SLOW, 1000)
    try:
        first = buckets.take(9, limit)
        assert first.remaining == 999  # an allowance of min(100, 999 // 2) follows
        client.delete(buckets.key(9, limit))  # what Redis holds no longer matters for a while
        local = [buckets.take(9, limit) for _ in range(MAX_ALLOWANCE)]
        assert [d.remaining for d in local] == list(range(998, 998 - MAX_ALLOWANCE, -1))
        # Spent: the next request goes to Redis with the 100 answered meanwhile (its bucket
        # was emptied above, so it now holds exactly these).
        charged = buckets.take(9, limit)
        assert charged.remaining == 1000 - MAX_ALLOWANCE - 1
        # An allowance ends with its time, spent or not.
        client.delete(buckets.key(9, limit))
        buckets.take(9, limit)  # from the allowance the last answer gave
        now[0] += ALLOWANCE_SECONDS
        assert buckets.take(9, limit).remaining == 1000 - 1 - 1
    finally:
        client.close()
        buckets.close()


def test_near_its_limit_every_request_is_decided_by_redis(settings: Settings) -> None:
    # Two processes (parts=2): r // 4 is 0 once fewer than 4 are left, and from then on
    # each request is a round trip; the key never gets more than its burst.
    namespace = f"rl-near-{uuid.uuid4().hex[:8]}"
    limit = Limit(SLOW, 12)
    a = RedisBuckets(redis_client(settings.redis_url), namespace, parts=2)
    b = RedisBuckets(redis_client(settings.redis_url), namespace, parts=2)
    try:
        answers = [(a if i % 3 else b).take(5, limit).allowed for i in range(40)]
    finally:
        a.close()
        b.close()
    assert answers.count(True) == 12
    assert answers[:12] == [True] * 12
