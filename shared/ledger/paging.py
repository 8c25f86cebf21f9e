"""Keyset paging for every list the API answers: opaque cursors, pages, and query parameters
checked strictly.

A cursor names the last row of a page by its sort key (one or more positive integers: an id,
or a time in microseconds and an id) and by the kind of list it belongs to, so that a
cursor of one list is refused by another. `Params` reads a query string's parameters,
refusing unknown names, repeated names and blank values with `InvalidRequest` naming the
parameter. Nothing here touches the database.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from shared.db import Row
from shared.errors import InvalidCursor, InvalidRequest
from shared.ledger.money import parse_id

#: How many items a page holds unless `limit` says otherwise, and the most it may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, and the cursor of the next page (None on the last)."""

    items: list[Row]
    next_cursor: str | None


def encode_cursor(kind: str, *keys: int) -> str:
    """The cursor after a row whose sort key is `keys`, in a list of `kind` (one letter)."""
    raw = kind + ".".join(str(key) for key in keys)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, arity: int = 1) -> tuple[int, ...]:
    """The sort key `encode_cursor(kind, ...)` put in `cursor`, `arity` integers between 1
    and 2^63-1. Raises `InvalidCursor` for anything else (another list's cursor included)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("cursor was not issued by this service for this list") from None
    parts = raw[1:].split(".") if raw.startswith(kind) else []
    keys = [parse_id(part) for part in parts]
    if len(keys) != arity or None in keys:
        raise InvalidCursor("cursor was not issued by this service for this list")
    return tuple(key for key in keys if key is not None)


def page_of(rows: Sequence[Row], limit: int, cursor_of: Callable[[Row], str]) -> Page:
    """The page of `rows`, fetched with `limit + 1` so that one more row than the page holds
    tells that another page follows; `cursor_of` names the last row kept."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return Page(items, cursor_of(items[-1]) if more and items else None)


def microseconds(moment: datetime.datetime) -> int:
    """`moment` (timezone-aware) as whole microseconds since 1970 UTC, for a cursor."""
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def moment(micros: int) -> datetime.datetime:
    """The inverse of `microseconds`. Raises `InvalidCursor` when it leaves datetime's range
    (a key no cursor of ours holds)."""
    try:
        return _EPOCH + datetime.timedelta(microseconds=micros)
    except OverflowError:
        raise InvalidCursor("cursor was not issued by this service for this list") from None


class Params:
    """The query parameters of one list request, as the web front parsed them (a value, or a
    list of values when the name repeats; blank values kept). Raises `InvalidRequest` naming
    the parameter(s): for names outside `known` (unless `extra(name)` claims them), and, as
    each is read, for one given twice or blank."""

    def __init__(
        self,
        raw: Mapping[str, str | list[str]],
        known: Collection[str],
        *,
        extra: Callable[[str], bool] = lambda name: False,
    ) -> None:
        unknown = sorted(name for name in raw if name not in known and not extra(name))
        if unknown:
            raise InvalidRequest(
                f"unknown query parameter(s): {', '.join(unknown)}"
                f" (this list takes {', '.join(sorted(known))})"
            )
        self._raw = raw

    def names(self) -> list[str]:
        return list(self._raw)

    def get(self, name: str, *, blank: bool = False) -> str | None:
        """The one value of `name`, or None when absent; an empty one only if `blank`."""
        value = self._raw.get(name)
        if value is None:
            return None
        if isinstance(value, list):
            raise InvalidRequest(f"{name} is given more than once")
        if not value and not blank:
            raise InvalidRequest(f"{name} is empty; leave it out to not filter on it")
        return value

    def limit(self) -> int:
        """`limit`: an integer from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent."""
        raw = self._raw.get("limit")
        if raw is None:
            return DEFAULT_LIMIT
        if isinstance(raw, list):
            raise InvalidRequest("limit is given more than once")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LIMIT):
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
        return int(raw)

    def cursor(self, kind: str, arity: int = 1) -> tuple[int, ...] | None:
        """`cursor`, decoded (see `decode_cursor`), or None when absent."""
        raw = self._raw.get("cursor")
        if raw is None:
            return None
        if isinstance(raw, list):
            raise InvalidRequest("cursor is given more than once")
        return decode_cursor(raw, kind, arity)

    def identifier(self, name: str) -> int | None:
        """`name` as a row id, or None when absent."""
        raw = self.get(name)
        if raw is None:
            return None
        parsed = parse_id(raw)
        if parsed is None:
            raise InvalidRequest(f"{name} must be an id: a whole number from 1 to 2^63-1")
        return parsed
