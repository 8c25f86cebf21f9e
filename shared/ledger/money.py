"""Money rules: amounts are integers in minor units, currencies are ISO 4217 style codes.

Each check raises `InvalidRequest` naming the field; none of them touches the database.
"""

from __future__ import annotations

import re

from shared.errors import InvalidRequest

#: Largest value a Postgres bigint holds; ids and balances live in bigints.
BIGINT_MAX = 2**63 - 1

#: Largest amount one transfer may move (10^15 minor units: ten trillion in a 2-decimal
#: currency). Far below BIGINT_MAX so that sums of many transfers stay representable.
MAX_AMOUNT = 10**15

_CURRENCY = re.compile(r"[A-Z]{3}")


def is_int(value: object) -> bool:
    """True for a JSON integer; False for floats, strings and booleans (bool is an int)."""
    return type(value) is int


def amount(value: object, field: str = "amount") -> int:
    """A positive integer amount in minor units, at most `MAX_AMOUNT`."""
    if not is_int(value):
        raise InvalidRequest(f"{field} must be an integer number of minor units")
    assert isinstance(value, int)
    if value <= 0:
        raise InvalidRequest(f"{field} must be positive")
    if value > MAX_AMOUNT:
        raise InvalidRequest(f"{field} must be at most {MAX_AMOUNT}")
    return value


def currency(value: object, field: str = "currency") -> str:
    """A three-letter upper-case currency code such as EUR."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidRequest(f"{field} must be a three-letter upper-case code such as EUR")
    return value


def parse_id(value: object) -> int | None:
    """`value` as a row id, or None when it cannot name any row. The one id parser: a JSON
    integer (from a body) or a string of ASCII digits (a URL segment, a cursor), between 1 and
    BIGINT_MAX. Never raises."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > len(str(BIGINT_MAX)):
            return None
        value = int(value)
    if not is_int(value):
        return None
    assert isinstance(value, int)
    return value if 1 <= value <= BIGINT_MAX else None


def identifier(value: object, field: str) -> int:
    """A body field holding an id: a JSON integer that `parse_id` accepts. Raises
    `InvalidRequest` naming `field` otherwise (a string of digits is not an integer here)."""
    if not is_int(value):
        raise InvalidRequest(f"{field} must be an integer id")
    parsed = parse_id(value)
    if parsed is None:
        raise InvalidRequest(f"{field} must be between 1 and {BIGINT_MAX}")
    return parsed
