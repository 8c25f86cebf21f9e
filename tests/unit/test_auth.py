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
