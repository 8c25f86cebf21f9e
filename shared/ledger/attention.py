"""Transfers that need an operator: dead-lettered, failed, or pending past a threshold.

`transfer_filter` turns query parameters into a `TransferFilter` (raising `InvalidRequest`
for a malformed one); `needing_attention` pages through the matching transfers by cursor,
oldest id first; `transfer_detail` gathers one transfer with its entries and the operator
actions taken on it. SQL is composed from fixed fragments with placeholders only. Functions
take a connection and raise only driver errors (and `InvalidCursor`, `TransferNotFound`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shared.db import Row
from shared.errors import InvalidRequest, TransferNotFound
from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT
from shared.ledger.operations import Page, decode_cursor, encode_cursor

#: What `state` may ask for: any of the three, or one of them.
STATES = ("attention", "dead", "failed", "stuck")

#: The columns of a listed transfer (t: the transfer, fa/ta: its accounts).
_COLUMNS = sql.SQL(
    "t.id, t.status, t.from_account_id, fa.user_id AS from_user_id, t.to_account_id,"
    " ta.user_id AS to_user_id, t.amount, t.currency, t.attempts, t.failure_code, t.last_error,"
    " t.created_at, t.dead_lettered_at, t.settled_at,"
    " CASE WHEN t.dead_lettered_at IS NOT NULL THEN 'dead-lettered'"
    " ELSE t.status END AS state,"
    " extract(epoch FROM now() - t.created_at)::float8 AS age_seconds"
)
_FROM = sql.SQL(
    " FROM transfers t JOIN accounts fa ON fa.id = t.from_account_id"
    " JOIN accounts ta ON ta.id = t.to_account_id"
)
_DEAD = sql.SQL("t.dead_lettered_at IS NOT NULL")
_FAILED = sql.SQL("t.status = 'failed'")
_STUCK = sql.SQL(
    "(t.status = 'pending' AND t.dead_lettered_at IS NULL"
    " AND t.created_at < now() - make_interval(secs => %s))"
)


@dataclass(frozen=True)
class TransferFilter:
    """Which transfers needing attention to show. Unset fields do not filter."""

    state: str = "attention"
    account: int | None = None
    user: int | None = None
    currency: str | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    failure_code: str | None = None
    error: str | None = None
    older_than_minutes: int | None = None

    def params(self) -> dict[str, str]:
        """The filter as query parameters (what `transfer_filter` reads back)."""
        found: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (f.name == "state" and value == "attention"):
                found[f.name] = str(value)
        return found


#: name -> (kind, minimum, maximum or pattern) of each filter field but `state`.
_INTS = {
    "account": (1, BIGINT_MAX),
    "user": (1, BIGINT_MAX),
    "min_amount": (0, MAX_AMOUNT),
    "max_amount": (0, MAX_AMOUNT),
    "older_than_minutes": (0, 10**7),
}
_PATTERNS = {"currency": "[A-Z]{3}", "failure_code": "[a-z_]{1,64}", "error": None}
#: The fields of a filter, in the order forms show them.
FILTER_FIELDS = ("state", *_INTS, *_PATTERNS)
#: The longest error text searched for.
MAX_ERROR_TEXT = 200


def _int_value(name: str, value: object, *, text: bool) -> int:
    low, high = _INTS[name]
    if text and isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise InvalidRequest(f"{name} must be a whole number from {low} to {high}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}")
    return value


def _text_value(name: str, value: object) -> str:
    pattern = _PATTERNS[name]
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_ERROR_TEXT
        or "\x00" in value
        or (pattern is not None and not re.fullmatch(pattern, value))
    ):
        raise InvalidRequest(f"{name} is not valid")
    return value.strip()


def _build(values: Mapping[str, object], *, text: bool) -> TransferFilter:
    """The filter of `values`; `text`: numbers come as decimal strings (a query string)."""
    unknown = set(values) - set(FILTER_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown filter fields: {', '.join(sorted(unknown))}")
    state = values.get("state", "attention")
    if state not in STATES:
        raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
    found: dict[str, Any] = {"state": state}
    for name, value in values.items():
        if name in _INTS:
            found[name] = _int_value(name, value, text=text)
        elif name in _PATTERNS:
            found[name] = _text_value(name, value)
    return TransferFilter(**found)


def transfer_filter(params: Mapping[str, str], *, strict: bool = False) -> TransferFilter:
    """A filter from query parameters: state (attention, dead, failed or stuck), account,
    user, currency, min_amount, max_amount, failure_code, error (text found in the last
    error), older_than_minutes. Empty values are ignored (what a form with blank fields
    sends) unless `strict`. Raises `InvalidRequest` for a malformed value or any other
    parameter, naming it (a typo must not widen the filter)."""
    values = {k: (v if strict else v.strip()) for k, v in params.items() if strict or v.strip()}
    unknown = set(params) - set(FILTER_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown filter fields: {', '.join(sorted(unknown))}")
    return _build(values, text=True)


def transfer_filter_from_json(body: object) -> TransferFilter:
    """A filter from a JSON object with the fields of `transfer_filter` (integers as JSON
    integers). Raises `InvalidRequest` for anything else, unknown fields included."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return _build(body, text=False)


def _like(text: str) -> str:
    """`text` as a literal ILIKE pattern found anywhere."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _where(
    wanted: TransferFilter, *, stuck_after_seconds: float, dead_only: bool = False
) -> tuple[sql.Composable, list[object]]:
    """The WHERE clause of `wanted`; `dead_only`: of its dead-lettered transfers only (the
    state clause is kept, so `failed` or `stuck` select none: neither is dead-lettered)."""
    params: list[object] = []
    if wanted.state == "dead":
        clauses: list[sql.Composable] = [_DEAD]
    elif wanted.state == "failed":
        clauses = [_FAILED]
    elif wanted.state == "stuck":
        clauses = [_STUCK]
        params.append(stuck_after_seconds)
    else:
        either = sql.SQL(" OR ").join([_DEAD, _FAILED, _STUCK])
        clauses = [sql.SQL("({})").format(either)]
        params.append(stuck_after_seconds)
    if dead_only and wanted.state != "dead":
        clauses.append(_DEAD)
    # (value, fragment, how many placeholders the fragment has)
    optional: list[tuple[object, str, int]] = [
        (wanted.account, "(t.from_account_id = %s OR t.to_account_id = %s)", 2),
        (wanted.user, "(fa.user_id = %s OR ta.user_id = %s)", 2),
        (wanted.currency, "t.currency = %s", 1),
        (wanted.min_amount, "t.amount >= %s", 1),
        (wanted.max_amount, "t.amount <= %s", 1),
        (wanted.failure_code, "t.failure_code = %s", 1),
        (None if wanted.error is None else _like(wanted.error), "t.last_error ILIKE %s", 1),
        (wanted.older_than_minutes, "t.created_at < now() - make_interval(mins => %s)", 1),
    ]
    for value, fragment, uses in optional:
        if value is not None:
            clauses.append(sql.SQL(fragment))
            params.extend([value] * uses)
    return sql.SQL(" AND ").join(clauses), params


def needing_attention(
    conn: psycopg.Connection,
    wanted: TransferFilter,
    *,
    stuck_after_seconds: float,
    limit: int,
    cursor: str | None,
) -> Page:
    """A page of the transfers matching `wanted`, by ascending id. Raises `InvalidCursor`."""
    after = decode_cursor(cursor) if cursor else 0
    where, params = _where(wanted, stuck_after_seconds=stuck_after_seconds)
    query = sql.SQL("SELECT {}{} WHERE {} AND t.id > %s ORDER BY t.id LIMIT %s").format(
        _COLUMNS, _FROM, where
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*params, after, limit + 1])
        rows = cur.fetchall()
    more = len(rows) > limit
    items = rows[:limit]
    return Page(items, encode_cursor(items[-1]["id"]) if more else None)


def count_matching(
    conn: psycopg.Connection, wanted: TransferFilter, *, stuck_after_seconds: float
) -> dict[str, int]:
    """How many transfers match `wanted` (`matching`), and how many of those are
    dead-lettered (`retryable`: what a bulk retry would send again)."""
    where, params = _where(wanted, stuck_after_seconds=stuck_after_seconds)
    query = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE t.dead_lettered_at IS NOT NULL){} WHERE {}"
    ).format(_FROM, where)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return {"matching": int(row[0]), "retryable": int(row[1])}


def dead_lettered_ids(
    conn: psycopg.Connection, wanted: TransferFilter, *, after: int, limit: int
) -> list[int]:
    """The next `limit` dead-lettered transfers matching `wanted` with ids above `after`,
    locked for the caller's transaction (others' locked rows are skipped): those
    `count_matching` counts as `retryable`, so none for state `failed` or `stuck`."""
    where, params = _where(wanted, stuck_after_seconds=0, dead_only=True)
    query = sql.SQL(
        "SELECT t.id{} WHERE {} AND t.id > %s ORDER BY t.id LIMIT %s FOR UPDATE OF t SKIP LOCKED"
    ).format(_FROM, where)
    return [int(row[0]) for row in conn.execute(query, [*params, after, limit]).fetchall()]


def transfer_detail(conn: psycopg.Connection, transfer_id: int) -> Row:
    """Every field of one transfer (with its accounts' owners and its metadata), its ledger
    entries and the operator actions taken on it. Raises `TransferNotFound`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {}, t.idempotency_scope, t.idempotency_key, t.enqueued_at,"
                " t.finished_at, t.metadata{} WHERE t.id = %s"
            ).format(_COLUMNS, _FROM),
            (transfer_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise TransferNotFound(f"transfer {transfer_id} does not exist")
        cur.execute(
            "SELECT id, transfer_id, account_id, amount, created_at FROM entries"
            " WHERE transfer_id = %s ORDER BY id",
            (transfer_id,),
        )
        row["entries"] = cur.fetchall()
        cur.execute(
            "SELECT a.id, a.key_id, k.label AS key_label, a.action, a.detail, a.created_at,"
            " cardinality(a.transfer_ids) AS transfers FROM operator_actions a"
            " LEFT JOIN api_keys k ON k.id = a.key_id"
            " WHERE a.transfer_ids @> ARRAY[%s]::bigint[] ORDER BY a.id",
            (transfer_id,),
        )
        row["actions"] = cur.fetchall()
    return row
