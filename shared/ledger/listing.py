"""The caller's transfers and accounts, newest first, a page at a time, with filters.

Whose: an operator key sees every transfer and account. A user's key sees its user's
accounts, and the transfers from or to any of them (a payer and a payee both see a payment,
as `GET /transfers/{id}` shows it to both). A filter narrows that set and never widens it: a
user filtering on someone else's account sees the transfers between that account and its
own; on an account that does not exist, nothing.

How: transfers are ordered by (created_at, id), newest first, and every filter has an index
ending in (created_at, id) (migration 0009), so a page reads about as many index entries as
it answers, however deep the cursor and however rare the status. A user's transfers, or one
account's, are the union of index ranges per account, status and direction (out of it, into
it), each cut at the page size before they are merged (`transfers_sql`).
tests/integration/test_listing_plans.py holds the plans to that.

`transfer_query` and `account_query` read query parameters (raising `InvalidRequest` or
`InvalidCursor` naming the parameter); `list_transfers` and `list_accounts` answer a `Page`.
Driver errors propagate.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.errors import InvalidRequest
from shared.ledger import commands
from shared.ledger.auth import Principal
from shared.ledger.operations import TRANSFER_FIELDS
from shared.ledger.paging import (
    Page,
    Params,
    encode_cursor,
    microseconds,
    moment,
    page_of,
)

#: What `status` may be.
STATUSES = ("pending", "settled", "failed")
#: The cursor kinds of the two lists (a cursor of one is refused by the other).
TRANSFER_CURSOR = "t"
ACCOUNT_CURSOR = "a"

_FAILURE_CODE = re.compile(r"[a-z_]{1,64}")
#: RFC 3339's date-time (the `T` and `Z` in either case): a date, a time, an offset.
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_METADATA_FILTER = re.compile(r"metadata\[(.*)\]", re.DOTALL)

TRANSFER_PARAMETERS = (
    "limit", "cursor", "status", "account_id", "failure_code", "created_after", "created_before",
)  # fmt: skip
ACCOUNT_PARAMETERS = ("limit", "cursor", "user_id", "currency")


@dataclass(frozen=True)
class TransferQuery:
    """Which transfers to list: a page of `limit` after `cursor` ((created_at, id) of the last
    transfer of the previous page), matching every filter given."""

    limit: int = 100
    cursor: tuple[datetime.datetime, int] | None = None
    status: str | None = None
    account_id: int | None = None
    failure_code: str | None = None
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def _is_metadata_filter(name: str) -> bool:
    return name.startswith("metadata")


def _date_time(params: Params, name: str) -> datetime.datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    found = _DATE_TIME.fullmatch(raw)
    if found is None:
        hint = " (send + in an offset as %2B)" if " " in raw else ""
        raise InvalidRequest(
            f"{name} must be an RFC 3339 date-time with an offset, such as"
            f" 2024-06-01T12:00:00Z or 2024-06-01T14:00:00%2B02:00{hint}"
        )
    day, clock, fraction, offset = found.groups()
    # Microseconds are what Postgres keeps: finer digits are cut, as Postgres would round.
    micro = f".{fraction[:6]}" if fraction else ""
    offset = "+00:00" if offset in "Zz" else offset
    try:
        return datetime.datetime.fromisoformat(f"{day}T{clock}{micro}{offset}")
    except ValueError:
        raise InvalidRequest(f"{name} is not a date-time that exists: {raw}") from None


def _metadata_filter(params: Params) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for name in params.names():
        if not _is_metadata_filter(name):
            continue
        found = _METADATA_FILTER.fullmatch(name)
        if found is None:
            raise InvalidRequest(
                f"{name} is not a metadata filter: write metadata[key]=value (brackets"
                " encoded as %5B and %5D if your client does not)"
            )
        key = commands.metadata_key(found.group(1), "metadata filter")
        wanted[key] = commands.metadata_value(params.get(name, blank=True), name)
    if len(wanted) > commands.MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"at most {commands.MAX_METADATA_KEYS} metadata filters (a transfer has at most"
            f" {commands.MAX_METADATA_KEYS} keys)"
        )
    return wanted


def transfer_query(raw: Mapping[str, str | list[str]]) -> TransferQuery:
    """The query of `GET /transfers` from its query parameters (blank values kept; a list
    where a name repeats). Raises `InvalidRequest` naming the parameter at fault (unknown,
    repeated, blank or malformed), `InvalidCursor` for a cursor not issued for this list."""
    params = Params(raw, TRANSFER_PARAMETERS, extra=_is_metadata_filter)
    limit = params.limit()
    found = params.cursor(TRANSFER_CURSOR, 2)
    cursor = None if found is None else (moment(found[0]), found[1])
    status = params.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    failure_code = params.get("failure_code")
    if failure_code is not None and not _FAILURE_CODE.fullmatch(failure_code):
        raise InvalidRequest("failure_code must be a code such as insufficient_funds")
    after = _date_time(params, "created_after")
    before = _date_time(params, "created_before")
    if after is not None and before is not None and after >= before:
        raise InvalidRequest("created_after must be earlier than created_before")
    return TransferQuery(
        limit=limit,
        cursor=cursor,
        status=status,
        account_id=params.identifier("account_id"),
        failure_code=failure_code,
        created_after=after,
        created_before=before,
        metadata=_metadata_filter(params),
    )


_COLUMNS = sql.SQL(", ").join(sql.Identifier("t", name) for name in TRANSFER_FIELDS)
_NEWEST_FIRST = sql.SQL(" ORDER BY t.created_at DESC, t.id DESC LIMIT %s")


def _conditions(
    query: TransferQuery, *, status: bool = True
) -> tuple[list[sql.Composable], list[object]]:
    """The WHERE conditions of the filters (`status` too, unless told not to) and the
    cursor, with their parameters."""
    conditions: list[sql.Composable] = []
    params: list[object] = []

    def where(fragment: str, *values: object) -> None:
        conditions.append(sql.SQL(fragment))
        params.extend(values)

    if status and query.status is not None:
        where("t.status = %s", query.status)
    if query.failure_code is not None:
        where("t.failure_code = %s", query.failure_code)
    if query.created_after is not None:
        where("t.created_at > %s", query.created_after)
    if query.created_before is not None:
        where("t.created_at < %s", query.created_before)
    if query.metadata:
        # The second condition is the partial index's own, so the planner may use it.
        where("t.metadata @> %s AND t.metadata <> '{}'::jsonb", Jsonb(dict(query.metadata)))
    if query.cursor is not None:
        where("(t.created_at, t.id) < (%s, %s)", *query.cursor)
    return conditions, params


def _and(conditions: list[sql.Composable]) -> sql.Composable:
    return sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")


def statuses(query: TransferQuery) -> list[str]:
    """The statuses a transfer matching `query` may have (a failure code means failed)."""
    wanted = [query.status] if query.status is not None else list(STATUSES)
    return [s for s in wanted if query.failure_code is None or s == "failed"]


#: Up to this many accounts, each account's two ranges (out of it, into it) are branches of
#: their own, planned with the account's own statistics: a busy account's range is then read
#: in order and cut at the page, where a plan for "any account" would read all of it and
#: sort. Beyond, one pair of branches runs for each account in turn (a user with that many
#: accounts).
EXPLICIT_ACCOUNTS = 16


def transfers_sql(
    query: TransferQuery, accounts: list[int] | None, counterparty: int | None = None
) -> tuple[sql.Composed, list[object]]:
    """The statement listing `query`'s page, and its parameters: over every transfer when
    `accounts` is None, else over those from or to one of `accounts` (and, with
    `counterparty`, from or to that account as well). Exposed so that a test can EXPLAIN
    exactly what runs.

    Over accounts, each (account, direction, status) is one range of an index in the
    listing's order, cut at the page size; the ranges are merged and cut again. A transfer
    between two of the accounts is taken from the range of its source only. The status of a
    range comes from a list joined in, never a literal, so that no plan trades the ordered
    range for a scan of every transfer in a rare status (a partial index such as the
    dashboard's `transfers_failed` would tempt it) and then a sort."""
    fetch = query.limit + 1
    if accounts is None:
        conditions, params = _conditions(query)
        statement = sql.SQL("SELECT {} FROM transfers t WHERE {}{}").format(
            _COLUMNS, _and(conditions), _NEWEST_FIRST
        )
        return statement, [*params, fetch]
    conditions, params = _conditions(query, status=False)
    explicit = len(accounts) <= EXPLICIT_ACCOUNTS
    each: list[int | None] = [*accounts] if explicit else [None]
    source: sql.Composable = sql.SQL("unnest(%s::text[]) AS s(status)")
    outer: list[object] = [statuses(query)]
    if not explicit:
        source = sql.SQL("unnest(%s::bigint[]) AS a(id) CROSS JOIN {}").format(source)
        outer.insert(0, accounts)
    branches: list[sql.Composable] = []
    args: list[object] = []
    for account in each:
        fixed: list[object] = [] if account is None else [account]
        which = sql.SQL("a.id") if account is None else sql.SQL("%s::bigint")
        out_of = [
            sql.SQL("t.from_account_id = {} AND t.status = s.status").format(which),
            *conditions,
        ]
        into = [
            sql.SQL("t.to_account_id = {} AND t.status = s.status").format(which),
            sql.SQL("t.from_account_id <> ALL(%s::bigint[])"),
            *conditions,
        ]
        out_args: list[object] = [*fixed, *params]
        in_args: list[object] = [*fixed, accounts, *params]
        if counterparty is not None:
            out_of.append(sql.SQL("t.to_account_id = %s::bigint"))
            out_args.append(counterparty)
            into.append(sql.SQL("t.from_account_id = %s::bigint"))
            in_args.append(counterparty)
        for where, values in ((out_of, out_args), (into, in_args)):
            branches.append(
                sql.SQL("(SELECT {} FROM transfers t WHERE {}{})").format(
                    _COLUMNS, _and(where), _NEWEST_FIRST
                )
            )
            args.extend([*values, fetch])
    statement = sql.SQL(
        "SELECT t.* FROM {} CROSS JOIN LATERAL ({}) t"
        " ORDER BY t.created_at DESC, t.id DESC LIMIT %s"
    ).format(source, sql.SQL(" UNION ALL ").join(branches))
    return statement, [*outer, *args, fetch]


def _scope(
    conn: psycopg.Connection, query: TransferQuery, by: Principal
) -> tuple[list[int] | None, int | None]:
    """(the accounts whose transfers to read, None for all; a counterparty they must have)."""
    if by.user_id is None:
        return (None if query.account_id is None else [query.account_id]), None
    own = [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM accounts WHERE user_id = %s ORDER BY id", (by.user_id,)
        ).fetchall()
    ]
    if query.account_id is None:
        return own, None
    if query.account_id in own:
        return [query.account_id], None
    return own, query.account_id


def transfer_cursor(row: Mapping[str, object]) -> str:
    """The cursor after `row` in `GET /transfers`."""
    created = row["created_at"]
    assert isinstance(created, datetime.datetime)
    transfer_id = row["id"]
    assert isinstance(transfer_id, int)
    return encode_cursor(TRANSFER_CURSOR, microseconds(created), transfer_id)


def list_transfers(conn: psycopg.Connection, query: TransferQuery, *, by: Principal) -> Page:
    """A page of `by`'s transfers matching `query`, newest first (see the module's text for
    whose transfers a key sees). Never raises for a filter that matches nothing."""
    accounts, counterparty = _scope(conn, query, by)
    if accounts == [] or not statuses(query):
        return Page([], None)
    statement, params = transfers_sql(query, accounts, counterparty)
    with conn.cursor(row_factory=dict_row) as cur:
        # Planned for these values each time, never as a generic prepared plan: which index
        # range is cheap depends on the account and the status asked for.
        cur.execute(statement, params, prepare=False)
        rows = cur.fetchall()
    return page_of(rows, query.limit, transfer_cursor)


@dataclass(frozen=True)
class AccountQuery:
    """Which accounts to list: a page of `limit` with ids below `cursor`, matching the
    filters given."""

    limit: int = 100
    cursor: int | None = None
    user_id: int | None = None
    currency: str | None = None


_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


def account_query(raw: Mapping[str, str | list[str]]) -> AccountQuery:
    """The query of `GET /accounts` from its query parameters. Raises `InvalidRequest` or
    `InvalidCursor` naming the parameter at fault."""
    params = Params(raw, ACCOUNT_PARAMETERS)
    limit = params.limit()
    cursor = params.cursor(ACCOUNT_CURSOR)
    currency = params.get("currency")
    # Any three capital letters: accounts opened before codes were checked can be found too.
    if currency is not None and not _CURRENCY_CODE.fullmatch(currency):
        raise InvalidRequest("currency must be a three-letter code in upper case, such as EUR")
    return AccountQuery(
        limit=limit,
        cursor=None if cursor is None else cursor[0],
        user_id=params.identifier("user_id"),
        currency=currency,
    )


def list_accounts(conn: psycopg.Connection, query: AccountQuery, *, by: Principal) -> Page:
    """A page of `by`'s accounts (every account for an operator) matching `query`, newest
    first, with their balances."""
    user_id = query.user_id
    if by.user_id is not None:
        if user_id is not None and user_id != by.user_id:
            return Page([], None)
        user_id = by.user_id
    conditions: list[sql.Composable] = []
    params: list[object] = []
    for value, fragment in (
        (user_id, "user_id = %s"),
        (query.currency, "currency = %s"),
        (query.cursor, "id < %s"),
    ):
        if value is not None:
            conditions.append(sql.SQL(fragment))
            params.append(value)
    statement = sql.SQL(
        "SELECT id, user_id, currency, balance, allow_negative_balance, created_at"
        " FROM accounts WHERE {} ORDER BY id DESC LIMIT %s"
    ).format(_and(conditions))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement, [*params, query.limit + 1])
        rows = cur.fetchall()
    return page_of(rows, query.limit, lambda last: encode_cursor(ACCOUNT_CURSOR, last["id"]))
