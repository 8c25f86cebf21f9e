"""API key format and the rules of a principal, without a database."""

from __future__ import annotations

import hashlib

import pytest

from shared.errors import ApiKeyInvalid, ApiKeyMissing, OperatorOnly
from shared.ledger import auth
from shared.ledger.auth import SYSTEM, Principal
from web.auth import bearer_key


def test_generated_keys_are_well_formed_and_never_repeat() -> None:
    keys = {auth.generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        auth.check_well_formed(key)
        assert len(key) == len("settle_") + 43


@pytest.mark.parametrize(
    "key",
    [
        "",
        "settle_",
        "settle_" + "a" * 42,
        "settle_" + "a" * 44,
        "sk_" + "a" * 43,
        "settle_" + "!" * 43,
    ],
)
def test_a_string_no_generated_key_could_be_is_refused_without_a_lookup(key: str) -> None:
    with pytest.raises(ApiKeyInvalid):
        auth.check_well_formed(key)


def test_a_key_is_stored_as_its_sha256_digest() -> None:
    key = auth.generate_key()
    assert auth.hash_key(key) == hashlib.sha256(key.encode()).digest()


def test_a_user_owns_only_its_own_resources_and_an_operator_owns_all() -> None:
    user = Principal(user_id=7, key_id=1)
    assert (user.owns(7), user.owns(8), user.is_operator) == (True, False, False)
    operator = Principal(user_id=None, key_id=2)
    assert (operator.owns(7), operator.owns(8), operator.is_operator) == (True, True, True)


def test_idempotency_scopes_are_per_user_and_shared_by_operators() -> None:
    assert Principal(user_id=7, key_id=1).idempotency_scope == "user:7"
    assert Principal(user_id=7, key_id=9).idempotency_scope == "user:7"
    assert Principal(user_id=None, key_id=2).idempotency_scope == SYSTEM.idempotency_scope


def test_only_an_operator_passes_require_operator() -> None:
    auth.require_operator(Principal(user_id=None, key_id=2))
    with pytest.raises(OperatorOnly):
        auth.require_operator(Principal(user_id=7, key_id=1))


@pytest.mark.parametrize(
    ("header", "key"),
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"), (" Bearer abc", "abc")],
)
def test_the_bearer_key_is_read_whatever_the_case_of_the_scheme(header: str, key: str) -> None:
    assert bearer_key(header) == key


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_authorization_header_is_a_missing_key(header: str | None) -> None:
    with pytest.raises(ApiKeyMissing):
        bearer_key(header)


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer  ", "Bearerabc"])
def test_another_scheme_or_no_key_after_bearer_is_an_invalid_key(header: str) -> None:
    with pytest.raises(ApiKeyInvalid):
        bearer_key(header)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_principal_is_trusted_until_its_ttl_from_the_lookup_start() -> None:
    clock = FakeClock()
    cache = auth.PrincipalCache(0.5, clock=clock)
    found = Principal(user_id=7, key_id=1)
    digest = auth.hash_key(auth.generate_key())
    started = clock()
    clock.now += 0.2  # the lookup took 0.2 s: it saw the key as it was when it began
    cache.put(digest, found, looked_up_at=started)
    assert cache.get(digest) == found
    clock.now = started + 0.499
    assert cache.get(digest) == found
    clock.now = started + 0.5
    assert cache.get(digest) is None
    assert cache.get(digest) is None  # and the entry is gone, not only hidden


def test_a_lookup_slower_than_the_ttl_is_not_remembered() -> None:
    clock = FakeClock()
    cache = auth.PrincipalCache(0.5, clock=clock)
    digest = auth.hash_key(auth.generate_key())
    started = clock()
    clock.now += 0.6
    cache.put(digest, Principal(user_id=7, key_id=1), looked_up_at=started)
    assert cache.get(digest) is None


def test_a_ttl_of_zero_remembers_nothing() -> None:
    cache = auth.PrincipalCache(0, clock=FakeClock())
    digest = auth.hash_key(auth.generate_key())
    cache.put(digest, Principal(user_id=7, key_id=1), looked_up_at=cache.clock())
    assert cache.get(digest) is None


@pytest.mark.parametrize("ttl", [-0.1, 1.01, 60])
def test_a_key_cannot_be_trusted_longer_than_the_revocation_contract(ttl: float) -> None:
    with pytest.raises(ValueError, match="0 to 1.0s"):
        auth.PrincipalCache(ttl)


@pytest.mark.parametrize("raw", ["-1", "1.5", "soon"])
def test_api_key_cache_seconds_outside_zero_to_one_is_a_bad_setting(raw: str) -> None:
    from shared.config import Settings
    from shared.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="API_KEY_CACHE_SECONDS"):
        Settings.from_env({"API_KEY_CACHE_SECONDS": raw})


def test_a_full_cache_drops_expired_principals_then_everything_but_the_newest() -> None:
    clock = FakeClock()
    cache = auth.PrincipalCache(0.5, max_entries=3, clock=clock)
    digests = [auth.hash_key(auth.generate_key()) for _ in range(5)]
    old, fresh = Principal(user_id=1, key_id=1), Principal(user_id=2, key_id=2)
    cache.put(digests[0], old, looked_up_at=clock())
    clock.now += 0.3
    cache.put(digests[1], fresh, looked_up_at=clock())
    cache.put(digests[2], fresh, looked_up_at=clock())
    clock.now += 0.3  # digests[0] has expired; the other two have not
    cache.put(digests[3], fresh, looked_up_at=clock())
    assert [cache.get(d) for d in digests[1:4]] == [fresh, fresh, fresh]
    cache.put(digests[4], fresh, looked_up_at=clock())  # full of live entries: start afresh
    assert [cache.get(d) for d in digests] == [None, None, None, None, fresh]
