"""Parsing of request bodies into typed commands, with one clear error per defect.

`parse_json` accepts only a JSON document whose numbers are integers or plain decimals, whose
integers are short enough to be ids or amounts, whose objects name each member once and whose
nesting stays shallow; the `*_request` functions reject unknown and missing fields, wrong
types, and text Postgres cannot store. All raise `InvalidJSON` or `InvalidRequest`; none
touches the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from shared.errors import (
    BatchTooLarge,
    IdempotencyKeyMissing,
    InvalidBatch,
    InvalidJSON,
    InvalidRequest,
    SettleError,
)
from shared.ledger import money

#: Deeper documents are refused before they reach the parser's recursion.
MAX_DEPTH = 32

#: Longer integer literals are refused before conversion: no id or amount needs more than 19
#: digits, and CPython's own cap (4300 digits) depends on how the interpreter was started.
MAX_INT_DIGITS = 64

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not a valid JSON number")


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJSON(f"integers may have at most {MAX_INT_DIGITS} digits")
    return int(literal)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With a repeated name, json.loads keeps the last value silently; a client (or a proxy
    # that reads the first) may have meant another, so the document is ambiguous.
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise InvalidJSON(f"the member {name!r} appears more than once in one object")
        members[name] = value
    return members


#: A JSON string literal, escapes included (to the end of the text when unterminated), and
#: one bracket: `_depth` drops the first and counts the second.
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"?')
_BRACKET = re.compile(r"[\[\]{}]")


def _depth(raw: str) -> int:
    # Brackets inside strings do not nest. Regular expressions scan the text in C: a
    # character loop here cost more than the parse itself for a batch of transfers.
    depth = deepest = 0
    for ch in _BRACKET.findall(_STRING.sub("", raw)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(raw: bytes) -> object:
    """The JSON document in `raw` (UTF-8). Raises `InvalidJSON` for anything else, including
    NaN/Infinity, integers longer than `MAX_INT_DIGITS`, a member name repeated in one object,
    and nesting deeper than `MAX_DEPTH`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8") from None
    if _depth(text) > MAX_DEPTH:
        raise InvalidJSON(f"the body is nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            object_pairs_hook=_unique_members,
        )
    except InvalidJSON:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None


def _fields(body: object, required: Set[str], optional: Set[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidRequest(f"missing field(s): {', '.join(missing)}")
    return body


def _text(value: object, field: str, *, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidRequest(f"{field} must be at most {max_length} characters")
    # JSON can spell both, but Postgres text cannot hold a NUL and a lone surrogate
    # ("\ud800") has no UTF-8 form: either would fail at the database as a 500.
    if "\x00" in value or not _encodable(value):
        raise InvalidRequest(f"{field} must be valid Unicode text without NUL characters")
    return value.strip()


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class NewUser:
    email: str
    name: str


@dataclass(frozen=True)
class NewAccount:
    user_id: int
    currency: str
    allow_negative_balance: bool


@dataclass(frozen=True)
class NewTransfer:
    from_account_id: int
    to_account_id: int
    amount: int
    currency: str | None
    idempotency_key: str
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of what the caller asked for, to tell a replay from a reused key. Metadata
        counts (the same key with other metadata is another request); none at all, or `{}`,
        hashes as requests did before transfers had metadata, so keys stay valid across
        the upgrade."""
        asked: list[object] = [self.from_account_id, self.to_account_id, self.amount]
        asked.append(self.currency)
        if self.metadata:
            asked.append(sorted(self.metadata.items()))
        return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


#: Limits of a transfer's metadata: how many keys, how long a key and a value may be
#: (in characters).
MAX_METADATA_KEYS = 20
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500


def metadata_key(key: object, field: str = "metadata") -> str:
    """A metadata key: a string of 1 to MAX_METADATA_KEY_LENGTH characters without square
    brackets (a filter names it as `metadata[key]`) or NUL. Raises `InvalidRequest`."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY_LENGTH:
        raise InvalidRequest(f"{field} keys must be 1 to {MAX_METADATA_KEY_LENGTH} characters long")
    if "[" in key or "]" in key or "\x00" in key or not _encodable(key):
        raise InvalidRequest(
            f"{field} keys must be Unicode text without square brackets or NUL characters"
        )
    return key


def metadata_value(value: object, name: str) -> str:
    """A metadata value: a string of at most MAX_METADATA_VALUE_LENGTH characters without
    NUL (empty is allowed); `name` is how errors call it. Raises `InvalidRequest`."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string (metadata is a flat object of strings)")
    if len(value) > MAX_METADATA_VALUE_LENGTH:
        raise InvalidRequest(f"{name} must be at most {MAX_METADATA_VALUE_LENGTH} characters")
    if "\x00" in value or not _encodable(value):
        raise InvalidRequest(f"{name} must be valid Unicode text without NUL characters")
    return value


def metadata(value: object, field: str = "metadata") -> dict[str, str]:
    """A transfer's metadata: a JSON object of at most MAX_METADATA_KEYS string values, keys
    as `metadata_key`, values as `metadata_value`. `field` names it in errors (an item of a
    batch says which item). Raises `InvalidRequest` naming the limit broken."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object whose values are strings")
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"{field} may have at most {MAX_METADATA_KEYS} keys; it has {len(value)}"
        )
    return {
        metadata_key(key, field): metadata_value(item, f"{field}[{key}]")
        for key, item in value.items()
    }


def user_request(body: object) -> NewUser:
    """`{"email", "name"}` -> `NewUser`."""
    fields = _fields(body, {"email", "name"}, set())
    email = _text(fields["email"], "email", max_length=254)
    if not _EMAIL.fullmatch(email):
        raise InvalidRequest("email must look like name@example.com")
    return NewUser(email=email.lower(), name=_text(fields["name"], "name"))


def account_request(body: object) -> NewAccount:
    """`{"user_id", "currency", "allow_negative_balance"?}` -> `NewAccount`."""
    fields = _fields(body, {"user_id", "currency"}, {"allow_negative_balance"})
    allow_negative = fields.get("allow_negative_balance", False)
    if not isinstance(allow_negative, bool):
        raise InvalidRequest("allow_negative_balance must be true or false")
    return NewAccount(
        user_id=money.identifier(fields["user_id"], "user_id"),
        currency=money.currency(fields["currency"]),
        allow_negative_balance=allow_negative,
    )


def transfer_request(body: object, idempotency_key: str | None) -> NewTransfer:
    """`{"from_account_id", "to_account_id", "amount", "currency"?, "metadata"?}` plus the
    Idempotency-Key header -> `NewTransfer`. Raises `IdempotencyKeyMissing` without a key."""
    if idempotency_key is None or not idempotency_key.strip():
        raise IdempotencyKeyMissing("the Idempotency-Key header is required")
    if not _KEY.fullmatch(idempotency_key):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
    fields = _fields(body, {"from_account_id", "to_account_id", "amount"}, TRANSFER_OPTIONAL)
    return transfer_fields(fields, idempotency_key)


#: The optional members of a transfer's JSON object.
TRANSFER_OPTIONAL = frozenset({"currency", "metadata"})


def transfer_fields(fields: Mapping[str, Any], idempotency_key: str) -> NewTransfer:
    """The transfer in `fields` (a JSON object whose members `_fields` has checked), under
    `idempotency_key`: the members' values checked one by one. Raises `InvalidRequest`."""
    currency = fields.get("currency")
    return NewTransfer(
        from_account_id=money.identifier(fields["from_account_id"], "from_account_id"),
        to_account_id=money.identifier(fields["to_account_id"], "to_account_id"),
        amount=money.amount(fields["amount"]),
        currency=None if currency is None else money.currency(currency),
        idempotency_key=idempotency_key,
        metadata=metadata(fields.get("metadata", {})),
    )


#: Most transfers in one `POST /transfers/batch`.
MAX_BATCH_ITEMS = 1000

#: The members of one item of a batch: a transfer plus its own idempotency key (checked
#: first, so that an item without one is told so).
BATCH_ITEM_REQUIRED = frozenset({"from_account_id", "to_account_id", "amount"})
BATCH_ITEM_OPTIONAL = TRANSFER_OPTIONAL | {"idempotency_key"}


@dataclass(frozen=True)
class BatchRequest:
    """A batch as parsed: one entry per item in request order, the transfer it asks for or
    the error that refuses that item alone; `atomic` makes the batch all-or-nothing."""

    items: tuple[NewTransfer | SettleError, ...]
    atomic: bool


def idempotency_key(value: object, name: str = "Idempotency-Key") -> str:
    """An idempotency key: 1 to 255 visible ASCII characters. Raises `IdempotencyKeyMissing`
    for none (or a blank one) and `InvalidRequest` for any other value; `name` is how the
    errors call it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IdempotencyKeyMissing(f"{name} is required")
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise InvalidRequest(f"{name} must be 1 to 255 visible ASCII characters")
    return value


def batch_request(body: object) -> BatchRequest:
    """`{"transfers": [item, ...], "atomic"?}` -> `BatchRequest`, where each item is a
    transfer's JSON object with its own `idempotency_key`. A body that is not such a batch
    (not an object, `transfers` missing, not a list or empty) raises `InvalidBatch`, one
    longer than `MAX_BATCH_ITEMS` `BatchTooLarge`; a defect of one item is that item's error
    (`InvalidRequest` or `IdempotencyKeyMissing`), the others still parsed."""
    try:
        fields = _fields(body, {"transfers"}, {"atomic"})
    except InvalidRequest as exc:
        raise InvalidBatch(f'{exc.message} (a batch is {{"transfers": [...]}})') from None
    transfers = fields["transfers"]
    if not isinstance(transfers, list) or not transfers:
        raise InvalidBatch("transfers must be a non-empty JSON array of transfers")
    if len(transfers) > MAX_BATCH_ITEMS:
        raise BatchTooLarge(
            f"a batch holds at most {MAX_BATCH_ITEMS} transfers; this one has {len(transfers)}"
        )
    atomic = fields.get("atomic", False)
    if not isinstance(atomic, bool):
        raise InvalidBatch("atomic must be true or false")
    return BatchRequest(items=tuple(_batch_item(item) for item in transfers), atomic=atomic)


def _batch_item(item: object) -> NewTransfer | SettleError:
    if not isinstance(item, dict):
        return InvalidRequest("each transfer of a batch must be a JSON object")
    try:
        key = idempotency_key(item.get("idempotency_key"), "idempotency_key")
        fields = _fields(item, BATCH_ITEM_REQUIRED, BATCH_ITEM_OPTIONAL)
        return transfer_fields(fields, key)
    except InvalidRequest as exc:
        return exc


def limit(raw: str | None, *, default: int = 100, maximum: int = 1000) -> int:
    """The `?limit=` query parameter: an integer from 1 to `maximum`."""
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= maximum):
        raise InvalidRequest(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def body_fields(
    body: object, required: Set[str], optional: Set[str] = frozenset()
) -> Mapping[str, Any]:
    """`body` as a JSON object's members, refusing anything but an object, unknown members
    and missing ones with `InvalidRequest` naming them (for bodies parsed outside here)."""
    return _fields(body, required, optional)
