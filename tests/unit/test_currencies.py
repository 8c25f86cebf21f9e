"""ISO 4217: which codes are currencies, where each one's point goes, and how amounts read."""

from __future__ import annotations

import datetime

import iso4217
import pytest

from shared.errors import InvalidRequest
from shared.ledger import currencies, money
from shared.ledger.currencies import format_amount


def test_the_table_is_the_iso_4217_list_the_package_ships_with_its_minor_units() -> None:
    """Every code the package lists with minor units is accepted with that exponent, and
    nothing else is: the table is the maintained one, not a copy that could drift."""
    listed = {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}
    assert dict(currencies.EXPONENTS) == listed
    published: datetime.date = currencies.PUBLISHED
    assert published >= datetime.date(2026, 1, 1)
    assert len(currencies.EXPONENTS) > 150


@pytest.mark.parametrize(
    ("code", "places"),
    [("EUR", 2), ("USD", 2), ("GBP", 2), ("JPY", 0), ("KRW", 0), ("ISK", 0), ("BHD", 3)]
    + [("KWD", 3), ("TND", 3), ("CLF", 4), ("UYW", 4)],
)
def test_each_currency_has_its_own_minor_unit_exponent(code: str, places: int) -> None:
    assert currencies.exponent(code) == places
    assert money.currency(code) == code


@pytest.mark.parametrize(
    "code",
    [
        "ZZZ",  # three capital letters, but no currency
        "ABC",
        "XXX",  # ISO's "no currency": no minor units
        "XTS",  # reserved for testing
        "XAU",  # gold: a commodity with no minor units
        "DEM",  # withdrawn in 2002
    ],
)
def test_a_code_that_is_no_active_iso_4217_currency_with_minor_units_is_refused(
    code: str,
) -> None:
    assert currencies.exponent(code) is None
    with pytest.raises(InvalidRequest, match=f"currency must be an ISO 4217 .*{code}"):
        money.currency(code)


@pytest.mark.parametrize(
    ("amount", "code", "shown"),
    [
        (1250, "JPY", "1,250 JPY"),
        (1250, "EUR", "12.50 EUR"),
        (123456789, "EUR", "1,234,567.89 EUR"),
        (5, "EUR", "0.05 EUR"),
        (-30, "EUR", "-0.30 EUR"),
        (1250, "BHD", "1.250 BHD"),
        (-5, "KWD", "-0.005 KWD"),
        (12345, "CLF", "1.2345 CLF"),
        (0, "USD", "0.00 USD"),
        (-1250, "KRW", "-1,250 KRW"),
    ],
)
def test_an_amount_in_minor_units_reads_with_its_currencys_decimals(
    amount: int, code: str, shown: str
) -> None:
    assert format_amount(amount, code) == shown


def test_an_amount_in_a_code_the_table_does_not_know_shows_its_minor_units_as_such() -> None:
    """An account opened while any three capital letters passed keeps working; where the
    point goes in its currency is unknown, so its amounts say they are minor units."""
    assert format_amount(1250, "ZZZ") == "1,250 ZZZ (minor units)"
