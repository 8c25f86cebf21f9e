"""ISO 4217 currencies and their minor units, from the `iso4217` package (checked against
1.16.20260101, the table ISO's maintenance agency published on 2026-01-01).

This is the one module that reads the package: `EXPONENTS` maps each active code that has
minor units to its exponent (EUR 2, JPY 0, BHD 3, CLF 4); codes ISO lists without minor units
(XAU gold, XDR, XTS for testing, XXX for "no currency") are not money an account can hold,
so they are left out. `format_amount` shows an amount in minor units the way a person reads
it. Nothing here raises for an unknown code: `money.currency` refuses those at the door.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import iso4217


def _exponents() -> Mapping[str, int]:
    found: dict[str, int] = {}
    for currency in iso4217.Currency:
        exponent = currency.exponent
        if exponent is not None:
            found[currency.code] = exponent
    return MappingProxyType(dict(sorted(found.items())))


#: Code -> minor-unit exponent (decimal places) of every currency Settle accepts.
EXPONENTS: Mapping[str, int] = _exponents()

#: The date of the ISO 4217 table in use (shown by the docs and checked by a test).
PUBLISHED = iso4217.__published__


def exponent(code: str) -> int | None:
    """The number of decimal places of `code` (2 for EUR: 1250 is 12.50 EUR), or None when
    `code` is not an ISO 4217 currency with minor units."""
    return EXPONENTS.get(code)


def format_amount(amount: int, code: str) -> str:
    """`amount` minor units of `code` as a person reads it: `1,234.56 EUR`, `1,250 JPY`,
    `-0.005 BHD`. A code this table does not know (an account opened before codes were
    checked) shows the integer with `(minor units)`, since where its point goes is unknown."""
    places = exponent(code)
    sign = "-" if amount < 0 else ""
    if places is None:
        return f"{sign}{abs(amount):,} {code} (minor units)"
    if places == 0:
        return f"{sign}{abs(amount):,} {code}"
    whole, fraction = divmod(abs(amount), 10**places)
    return f"{sign}{whole:,}.{fraction:0{places}d} {code}"
