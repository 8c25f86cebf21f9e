"""Money rules without a database: amounts, currency codes and ids."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.ledger import money
from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT


@pytest.mark.parametrize("value", [1, 250, MAX_AMOUNT])
def test_a_positive_integer_amount_up_to_the_maximum_is_accepted(value: int) -> None:
    assert money.amount(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1.0, id="float-with-integer-value"),
        pytest.param(10.5, id="float"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param("100", id="string"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param(None, id="null"),
        pytest.param([100], id="list"),
        pytest.param({"value": 100}, id="object"),
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(-MAX_AMOUNT, id="large-negative"),
        pytest.param(MAX_AMOUNT + 1, id="over-max-amount"),
        pytest.param(BIGINT_MAX, id="bigint-max"),
        pytest.param(BIGINT_MAX + 1, id="beyond-bigint"),
        pytest.param(10**5000, id="5000-digits"),
    ],
)
def test_an_amount_that_is_not_a_positive_integer_within_bounds_is_rejected(
    value: object,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        money.amount(value)
    assert caught.value.code == "invalid_request"
    assert "amount" in caught.value.message


def test_a_rejected_amount_names_the_field_it_came_from() -> None:
    with pytest.raises(InvalidRequest, match="^fee "):
        money.amount(0, "fee")


@pytest.mark.parametrize("value", ["EUR", "USD", "JPY", "BHD"])
def test_an_iso_4217_currency_code_is_accepted(value: str) -> None:
    assert money.currency(value) == value


@pytest.mark.parametrize(
    "value",
    ["eur", "Eur", "EU", "EURO", "", " EUR", "EUR\n", "E1R", "ÉUR", "ＥＵＲ", None, 978, ["EUR"]]
    + ["ZZZ", "XXX", "QQQ"],
)
def test_anything_but_an_iso_4217_code_in_upper_case_is_not_a_currency(value: object) -> None:
    with pytest.raises(InvalidRequest, match="currency"):
        money.currency(value)


@pytest.mark.parametrize("value", [1, 42, BIGINT_MAX])
def test_an_id_is_a_positive_integer_that_fits_a_bigint(value: int) -> None:
    assert money.identifier(value, "user_id") == value


@pytest.mark.parametrize(
    "value", [0, -1, BIGINT_MAX + 1, 2**64, True, 1.0, "1", None, [1]], ids=repr
)
def test_an_id_outside_the_bigint_range_or_of_another_type_is_rejected(value: object) -> None:
    with pytest.raises(InvalidRequest, match="^user_id "):
        money.identifier(value, "user_id")


def test_only_json_integers_count_as_integers() -> None:
    assert money.is_int(5)
    assert not money.is_int(True)
    assert not money.is_int(5.0)
    assert not money.is_int("5")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (1, 1),
        ("1", 1),
        ("0042", 42),
        (BIGINT_MAX, BIGINT_MAX),
        (str(BIGINT_MAX), BIGINT_MAX),
        (0, None),
        ("0", None),
        (BIGINT_MAX + 1, None),
        (str(BIGINT_MAX + 1), None),
        ("1" * 40, None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.0", None),
        ("\uff11", None),  # a full-width digit: isdigit() says yes, an id it is not
        ("", None),
        (True, None),
        (1.0, None),
        (None, None),
    ],
    ids=repr,
)
def test_one_parser_reads_an_id_from_a_json_integer_or_a_url_segment(
    value: object, parsed: int | None
) -> None:
    assert money.parse_id(value) == parsed
