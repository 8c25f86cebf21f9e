"""Request parsing without a database: JSON documents, commands, headers and query values."""

from __future__ import annotations

import dataclasses

import pytest

from shared.errors import IdempotencyKeyMissing, InvalidJSON, InvalidRequest
from shared.ledger import commands
from shared.ledger.commands import MAX_DEPTH, MAX_INT_DIGITS, NewTransfer
from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT

TRANSFER = {"from_account_id": 1, "to_account_id": 2, "amount": 500}


def transfer(**changes: object) -> dict[str, object]:
    """A valid transfer body with `changes`; a value of `...` removes the field."""
    body = {**TRANSFER, **changes}
    return {name: value for name, value in body.items() if value is not ...}


# parse_json


def test_a_json_document_is_parsed_into_python_values() -> None:
    raw = b'{"a": [1, -2, 2.5, "x", null, true, false], "b": {"c": "\\u00e9"}}'
    assert commands.parse_json(raw) == {
        "a": [1, -2, 2.5, "x", None, True, False],
        "b": {"c": "é"},
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b'{"amount": }',
        b'{"amount": 1,}',
        b"{'amount': 1}",
        b"[1 2]",
        b'{"amount": 1} trailing',
        b'{"amount": 0x10}',
        b'{"amount": 01}',
        b"\xef\xbb\xbf{}",
    ],
    ids=repr,
)
def test_malformed_json_is_rejected_as_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON) as caught:
        commands.parse_json(raw)
    assert caught.value.code == "invalid_json"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_numbers(constant: str) -> None:
    with pytest.raises(InvalidJSON, match=constant):
        commands.parse_json(f'{{"amount": {constant}}}'.encode())


def test_json_errors_are_invalid_requests_too() -> None:
    assert issubclass(InvalidJSON, InvalidRequest)


def test_nesting_up_to_the_maximum_depth_is_accepted() -> None:
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert commands.parse_json(raw) is not None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_nesting_deeper_than_the_maximum_is_rejected(depth: int) -> None:
    with pytest.raises(InvalidJSON, match="nested deeper"):
        commands.parse_json(b'{"a": ' + b"[" * depth + b"]" * depth + b"}")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * (MAX_DEPTH * 4) + '\\"{'
    raw = f'{{"name": "{text}"}}'.encode()
    assert commands.parse_json(raw) == {"name": "[" * (MAX_DEPTH * 4) + '"{'}


def test_nesting_after_a_string_ending_in_an_escaped_backslash_still_counts() -> None:
    # "\\" ends its string: the brackets after it are structure, not text.
    nested = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidJSON, match="nested deeper"):
        commands.parse_json(f'{{"a": "x\\\\", "b": {nested}}}'.encode())


@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_literal_of_5000_digits_is_rejected_before_conversion(sign: str) -> None:
    raw = f'{{"amount": {sign}{"9" * 5000}}}'.encode()
    with pytest.raises(InvalidJSON, match="digits"):
        commands.parse_json(raw)


def test_integer_literals_up_to_the_digit_limit_are_parsed_exactly() -> None:
    assert commands.parse_json(b"-" + b"9" * MAX_INT_DIGITS) == -int("9" * MAX_INT_DIGITS)
    with pytest.raises(InvalidJSON):
        commands.parse_json(b"9" * (MAX_INT_DIGITS + 1))


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "\xff"}', '{"name": "é"}'.encode("latin-1"), '{"a": 1}'.encode("utf-16")],
    ids=["invalid-byte", "latin-1", "utf-16"],
)
def test_a_body_that_is_not_utf8_is_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidJSON, match="UTF-8"):
        commands.parse_json(raw)


def test_a_member_named_twice_in_one_object_is_rejected() -> None:
    with pytest.raises(InvalidJSON, match="amount"):
        commands.parse_json(b'{"amount": 1, "to_account_id": 2, "amount": 1000000}')


# users


def test_a_user_request_yields_a_new_user_with_a_lower_case_email() -> None:
    new = commands.user_request({"email": " Ada@Example.COM ", "name": "  Ada Lovelace "})
    assert new == commands.NewUser(email="ada@example.com", name="Ada Lovelace")


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([], "JSON object"),
        (None, "JSON object"),
        ("ada@example.com", "JSON object"),
        ({"email": "ada@example.com"}, "missing field(s): name"),
        ({"name": "Ada"}, "missing field(s): email"),
        ({"email": "ada@example.com", "name": "Ada", "admin": True}, "unknown field(s): admin"),
        ({"email": 5, "name": "Ada"}, "email"),
        ({"email": "not-an-email", "name": "Ada"}, "email"),
        ({"email": "a@b", "name": "Ada"}, "email"),
        ({"email": "a b@example.com", "name": "Ada"}, "email"),
        ({"email": "x" * 250 + "@example.com", "name": "Ada"}, "email"),
        ({"email": "ada@example.com", "name": ""}, "name"),
        ({"email": "ada@example.com", "name": "   "}, "name"),
        ({"email": "ada@example.com", "name": None}, "name"),
        ({"email": "ada@example.com", "name": "x" * 201}, "name"),
        ({"email": "ada@example.com", "name": "Ada\x00"}, "name"),
        ({"email": "ada\x00@example.com", "name": "Ada"}, "email"),
        ({"email": "ada@example.com", "name": "Ada \ud800"}, "name"),
    ],
    ids=repr,
)
def test_a_bad_user_request_is_rejected_naming_the_defect(body: object, complaint: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        commands.user_request(body)
    assert complaint in caught.value.message


# accounts


def test_an_account_request_defaults_to_no_negative_balance() -> None:
    new = commands.account_request({"user_id": 7, "currency": "EUR"})
    assert new == commands.NewAccount(user_id=7, currency="EUR", allow_negative_balance=False)


def test_an_account_request_may_ask_for_a_treasury_account() -> None:
    body = {"user_id": 7, "currency": "USD", "allow_negative_balance": True}
    assert commands.account_request(body).allow_negative_balance is True


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"currency": "EUR"}, "missing field(s): user_id"),
        ({"user_id": 1}, "missing field(s): currency"),
        ({"user_id": 1, "currency": "EUR", "balance": 10}, "unknown field(s): balance"),
        ({"user_id": "1", "currency": "EUR"}, "user_id"),
        ({"user_id": 1.0, "currency": "EUR"}, "user_id"),
        ({"user_id": BIGINT_MAX + 1, "currency": "EUR"}, "user_id"),
        ({"user_id": 1, "currency": "eur"}, "currency"),
        ({"user_id": 1, "currency": None}, "currency"),
        ({"user_id": 1, "currency": "EUR", "allow_negative_balance": "yes"}, "allow_negative"),
        ({"user_id": 1, "currency": "EUR", "allow_negative_balance": 1}, "allow_negative"),
        ({"user_id": 1, "currency": "EUR", "allow_negative_balance": None}, "allow_negative"),
    ],
    ids=repr,
)
def test_a_bad_account_request_is_rejected_naming_the_defect(body: object, complaint: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        commands.account_request(body)
    assert complaint in caught.value.message


# transfers


def test_a_transfer_request_carries_its_idempotency_key() -> None:
    new = commands.transfer_request(transfer(currency="EUR"), "key-1")
    assert new == NewTransfer(
        from_account_id=1, to_account_id=2, amount=500, currency="EUR", idempotency_key="key-1"
    )


def test_a_transfer_request_may_leave_the_currency_out() -> None:
    assert commands.transfer_request(transfer(), "key-1").currency is None


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (transfer(memo="rent"), "unknown field(s): memo"),
        (transfer(amount=...), "missing field(s): amount"),
        (transfer(from_account_id=..., to_account_id=...), "from_account_id, to_account_id"),
        (transfer(amount=5.0), "amount"),
        (transfer(amount="500"), "amount"),
        (transfer(amount=True), "amount"),
        (transfer(amount=None), "amount"),
        (transfer(amount=0), "amount"),
        (transfer(amount=-500), "amount"),
        (transfer(amount=MAX_AMOUNT + 1), "amount"),
        (transfer(amount=BIGINT_MAX + 1), "amount"),
        (transfer(from_account_id="1"), "from_account_id"),
        (transfer(to_account_id=0), "to_account_id"),
        (transfer(to_account_id=BIGINT_MAX + 1), "to_account_id"),
        (transfer(currency="eur"), "currency"),
        (transfer(currency=978), "currency"),
        ([TRANSFER], "JSON object"),
    ],
    ids=repr,
)
def test_a_bad_transfer_request_is_rejected_naming_the_defect(body: object, complaint: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        commands.transfer_request(body, "key-1")
    assert complaint in caught.value.message


@pytest.mark.parametrize("key", [None, "", "   "], ids=repr)
def test_a_transfer_without_an_idempotency_key_is_refused_first(key: str | None) -> None:
    with pytest.raises(IdempotencyKeyMissing) as caught:
        commands.transfer_request({"not": "even a transfer"}, key)
    assert caught.value.code == "idempotency_key_missing"


@pytest.mark.parametrize("key", ["k", "a" * 255, "order-42/attempt_1", "~!#$%&'*+.^`|"])
def test_an_idempotency_key_of_up_to_255_visible_ascii_characters_is_accepted(
    key: str,
) -> None:
    assert commands.transfer_request(transfer(), key).idempotency_key == key


@pytest.mark.parametrize(
    "key", ["a" * 256, "two words", "tab\there", "ключ", " padded", "nul\x00"], ids=repr
)
def test_an_idempotency_key_that_is_too_long_or_not_visible_ascii_is_rejected(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        commands.transfer_request(transfer(), key)
    assert caught.value.code == "invalid_request"
    assert "Idempotency-Key" in caught.value.message


def test_equal_transfer_requests_have_equal_fingerprints_whatever_their_keys() -> None:
    first = commands.transfer_request(transfer(), "key-1")
    second = commands.transfer_request(dict(reversed(transfer().items())), "key-2")
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"from_account_id": 3},
        {"to_account_id": 3},
        {"amount": 501},
        {"currency": "EUR"},
    ],
    ids=repr,
)
def test_transfer_requests_that_differ_in_any_field_have_different_fingerprints(
    change: dict[str, object],
) -> None:
    original = commands.transfer_request(transfer(), "key-1")
    other = dataclasses.replace(original, **change)
    assert original.fingerprint() != other.fingerprint()


# limit


@pytest.mark.parametrize(("raw", "expected"), [(None, 100), ("1", 1), ("50", 50), ("1000", 1000)])
def test_a_limit_from_1_to_1000_is_accepted_and_defaults_to_100(
    raw: str | None, expected: int
) -> None:
    assert commands.limit(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "0", "1001", "-1", "+5", "1.5", "1e3", " 5", "abc", "１", "9" * 50], ids=repr
)
def test_a_limit_outside_1_to_1000_or_not_a_number_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidRequest, match="limit"):
        commands.limit(raw)
