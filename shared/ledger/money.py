"""Money rules: amounts are integers in minor units, currencies are ISO 4217 codes (with the
exponent that says where the point goes, `shared.ledger.currencies`).

Each check raises `InvalidRequest` naming the field; none of them touches the database.
"""

from __future__ import annotations

from shared.errors import InvalidRequest
from shared.ledger.currencies import EXPONENTS

#: Largest value a Postgres bigint holds; ids and balances live in bigints.
BIGINT_MAX = 2**63 - 1

#: Largest amount one transfer may move (10^15 minor units: ten trillion in a 2-decimal
#: currency). Far below BIGINT_MAX so that sums of many transfers stay representable.
MAX_AMOUNT = 10**15


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
    """An ISO 4217 currency code with minor units, upper case, such as EUR or JPY."""
    if not isinstance(value, str) or value not in EXPONENTS:
        shown = f" ({value!r} is not one)" if isinstance(value, str) and len(value) <= 8 else ""
        raise InvalidRequest(
            f"{field} must be an ISO 4217 currency code in upper case, such as EUR{shown}"
        )
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
