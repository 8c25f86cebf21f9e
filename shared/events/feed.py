"""The page of events after an id, as a key may see it, and the horizon it stops at.

Whose: an operator key sees every event; a user's key sees the events of the transfers from
or to one of its user's accounts (the rule of `GET /transfers/{id}`). In id order, up to the
horizon (see `shared.events`), so a reader that goes on from the last id it saw (or from
`next_after`) catches up exactly. An event is `{"id", "type", "created_at", "data"}`, `data`
the transfer as that change left it, in the fields of `GET /transfers/{id}`.

`event_query` reads the query parameters (raising `InvalidRequest` naming the one at fault);
`read_page` answers a `Page`, raising `CursorExpired` for an `after` whose events were
deleted by retention. Driver errors propagate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shared.db import Row
from shared.errors import CursorExpired, InvalidRequest
from shared.ledger.auth import Principal
from shared.ledger.money import BIGINT_MAX
from shared.ledger.operations import TRANSFER_FIELDS
from shared.ledger.paging import Params

#: Every event type, in the order a transfer may meet them.
TYPES = (
    "transfer.accepted",
    "transfer.settled",
    "transfer.failed",
    "transfer.cancelled",
    "transfer.dead_lettered",
    "transfer.released",
)
#: The longest a long-poll may wait, in seconds (`wait`, `Prefer: wait`).
MAX_WAIT_SECONDS = 30

PARAMETERS = ("after", "types", "limit", "wait")


@dataclass(frozen=True)
class EventQuery:
    """Which events to read: those after `after` (None: from the oldest kept), of `types`
    (None: all), at most `limit`; `wait`: seconds a long-poll may wait for the first."""

    after: int | None = None
    types: tuple[str, ...] | None = None
    limit: int = 100
    wait: int = 0


def _whole(params: Params, name: str, *, low: int, high: int, meaning: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and low <= int(raw) <= high):
        raise InvalidRequest(f"{name} must be {meaning}")
    return int(raw)


def event_query(raw: Mapping[str, str | list[str]]) -> EventQuery:
    """The query of `GET /events` from its query parameters (blank values kept; a list where
    a name repeats). Raises `InvalidRequest` naming the parameter at fault: unknown,
    repeated, blank or malformed."""
    params = Params(raw, PARAMETERS)
    limit = params.limit()
    after = _whole(
        params, "after", low=0, high=BIGINT_MAX, meaning="an event id (a whole number from 0)"
    )
    wait = _whole(
        params,
        "wait",
        low=0,
        high=MAX_WAIT_SECONDS,
        meaning=f"a whole number of seconds from 0 to {MAX_WAIT_SECONDS}",
    )
    types: tuple[str, ...] | None = None
    listed = params.get("types")
    if listed is not None:
        names = listed.split(",")
        unknown = sorted({name for name in names if name not in TYPES})
        if unknown:
            shown = ", ".join(repr(name) for name in unknown)
            raise InvalidRequest(
                f"types names no event type: {shown} (types is a comma-separated list of"
                f" {', '.join(TYPES)})"
            )
        types = tuple(dict.fromkeys(names))
    return EventQuery(after=after, types=types, limit=limit, wait=wait or 0)


def horizon(conn: psycopg.Connection) -> int:
    """The id up to which every event is visible to any snapshot taken from now on, and up to
    which no event will ever appear again (0: none). Read the events up to it in a later
    statement, never in the same one or in one repeatable-read transaction: those read a
    snapshot taken before it."""
    row = conn.execute("SELECT transfer_events_horizon()").fetchone()
    assert row is not None
    return int(row[0] or 0)


@dataclass(frozen=True)
class Page:
    """A page of events: `items` in id order, `next_after` the `after` to read on with
    (events up to it have all been answered or did not match), `has_more` whether more
    events are there now, `horizon` the horizon it was read up to."""

    items: list[Row]
    next_after: int
    has_more: bool
    horizon: int


def render(row: Mapping[str, Any]) -> Row:
    """An event row of `events_sql` as the API answers it."""
    return {
        "id": row["event_id"],
        "type": row["event_type"],
        "created_at": row["event_created_at"],
        "data": {name: row[name] for name in TRANSFER_FIELDS},
    }


#: The fields of a transfer that change, taken from the event (the state it left); the
#: others are read from the transfer itself, which never changes them.
CHANGING_FIELDS = ("status", "failure_code", "attempts", "settled_at", "dead_lettered_at")

_COLUMNS = sql.SQL(", ").join(
    [
        sql.SQL("e.id AS event_id, e.type AS event_type, e.created_at AS event_created_at"),
        sql.SQL("e.transfer_id AS id"),
        *(
            sql.SQL("{} AS {}").format(
                sql.Identifier("e" if name in CHANGING_FIELDS else "t", name),
                sql.Identifier(name),
            )
            for name in TRANSFER_FIELDS
            if name != "id"
        ),
    ]
)


def _ids_sql(query: EventQuery, accounts: Sequence[int] | None) -> sql.Composable:
    """The statement selecting the ids of a page's events: after `%(after)s`, up to the
    horizon `%(upto)s`, of the types asked for, `%(fetch)s` at most; over every event, or
    (`accounts`) over those of transfers from or to one of `%(accounts)s`."""
    typed = sql.SQL(" AND e.type = ANY(%(types)s)") if query.types else sql.SQL("")
    if accounts is None:
        return sql.SQL(
            "SELECT e.id FROM transfer_events e WHERE e.id > %(after)s AND e.id <= %(upto)s{}"
            " ORDER BY e.id LIMIT %(fetch)s"
        ).format(typed)
    # One range of an index per account and side, each in id order and cut at the page, then
    # merged; a transfer between two of the accounts is taken from its source's range only.
    return sql.SQL(
        "SELECT x.id FROM unnest(%(accounts)s::bigint[]) AS a(id) CROSS JOIN LATERAL ("
        "(SELECT e.id FROM transfer_events e WHERE e.from_account_id = a.id"
        " AND e.id > %(after)s AND e.id <= %(upto)s{typed} ORDER BY e.id LIMIT %(fetch)s)"
        " UNION ALL"
        " (SELECT e.id FROM transfer_events e WHERE e.to_account_id = a.id"
        " AND e.from_account_id <> ALL(%(accounts)s::bigint[])"
        " AND e.id > %(after)s AND e.id <= %(upto)s{typed} ORDER BY e.id LIMIT %(fetch)s)"
        ") x ORDER BY x.id LIMIT %(fetch)s"
    ).format(typed=typed)


def events_sql(query: EventQuery, accounts: Sequence[int] | None) -> sql.Composed:
    """The statement reading a page of events with their transfers (see `_ids_sql` for its
    parameters). Exposed so that a test can EXPLAIN exactly what runs."""
    return sql.SQL(
        "SELECT {} FROM ({}) page JOIN transfer_events e ON e.id = page.id"
        " JOIN transfers t ON t.id = e.transfer_id ORDER BY e.id"
    ).format(_COLUMNS, _ids_sql(query, accounts))


def read_page(
    conn: psycopg.Connection, query: EventQuery, *, by: Principal, retention_days: int
) -> Page:
    """The events after `query.after` that `by` sees, in id order, up to the horizon.

    Raises `CursorExpired` when events after `query.after` were deleted by retention
    (kept `retention_days` days). Without `after`, reads from the oldest event kept."""
    # One round trip for what the page depends on: the retention mark, the horizon (computed
    # before the events are read, in a later statement and so a later snapshot) and, for a
    # user's key, its user's accounts.
    row = conn.execute(
        "SELECT r.deleted_through, transfer_events_horizon(),"
        " (SELECT coalesce(array_agg(a.id ORDER BY a.id), '{}') FROM accounts a"
        "   WHERE a.user_id = %s)"
        " FROM transfer_event_retention r",
        (by.user_id,),
    ).fetchone()
    assert row is not None
    gone, upto = int(row[0]), int(row[1] or 0)
    accounts: list[int] | None = None if by.user_id is None else [int(a) for a in row[2]]
    after = gone if query.after is None else query.after
    if after < gone:
        raise CursorExpired(
            f"the events after {after} are no longer kept (events are kept for"
            f" {retention_days} days; those up to {gone} were deleted): read the current state"
            f" of the transfers you follow with GET /transfers, then continue with after={gone}"
        )
    if accounts == [] or after >= upto:
        return Page([], max(after, upto), False, upto)
    params = {
        "after": after,
        "upto": upto,
        "types": list(query.types or ()),
        "fetch": query.limit + 1,
        "accounts": accounts,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(events_sql(query, accounts), params)
        rows = cur.fetchall()
    items = [render(row) for row in rows[: query.limit]]
    if len(rows) > query.limit:
        return Page(items, items[-1]["id"], True, upto)
    # Fewer than a page: every event up to the horizon was looked at.
    return Page(items, upto, False, upto)
