"""Submitting many transfers at once (`POST /transfers/batch`): each item checked on its own,
the accepted ones recorded in one statement, each answered in request order.

Every item carries its own idempotency key, scoped like the Idempotency-Key header of a single
transfer (`operations.submit_transfer`): a replay of the same item answers the transfer
recorded the first time, the same key with another transfer is that item's
`IdempotencyKeyReused`. So retrying a whole batch answers the same per-item results and
records nothing twice. An item refused (a malformed transfer, an unknown account, a currency
mismatch) refuses that item only, and nothing of it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.db import Row
from shared.errors import IdempotencyKeyReused, SettleError, TransferRejected
from shared.ledger.auth import Principal, require_writer
from shared.ledger.commands import NewTransfer
from shared.ledger.operations import TRANSFER_COLUMNS, transfer_accounts, transfer_currency

#: One item's result: the transfer recorded (or recorded before, for a replay), or the
#: error that refused the item.
ItemResult = Row | SettleError


@dataclass(frozen=True)
class _Accepted:
    index: int
    new: NewTransfer
    currency: str


_INSERT = sql.SQL(
    "INSERT INTO transfers (idempotency_scope, idempotency_key, request_hash,"
    " from_account_id, to_account_id, amount, currency, metadata)"
    " SELECT %s, i.key, i.hash, i.src, i.dst, i.amount, i.currency, i.metadata"
    " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::text[], %s::jsonb[]) WITH ORDINALITY"
    " AS i (key, hash, src, dst, amount, currency, metadata, n)"
    " ORDER BY i.n"
    " ON CONFLICT (idempotency_scope, idempotency_key) DO NOTHING"
    " RETURNING idempotency_key, {}"
).format(TRANSFER_COLUMNS)

_BY_KEYS = sql.SQL(
    "SELECT idempotency_key, request_hash, {} FROM transfers"
    " WHERE idempotency_scope = %s AND idempotency_key = ANY(%s)"
).format(TRANSFER_COLUMNS)


def submit_transfers(
    conn: psycopg.Connection, items: Sequence[NewTransfer | SettleError], *, by: Principal
) -> list[ItemResult]:
    """Record the pending transfers `items` ask for, each on its own; returns one result per
    item in their order: the transfer (new, or the one recorded earlier under the item's
    key) or the error refusing it (an item that is already an error stays one).

    Three round trips at most whatever the size: the accounts read, one insert of every
    accepted item, and a read of the transfers whose keys were taken before. Raises
    `ReadOnlyKey` for a read-only key (nothing is written); driver errors propagate, and
    then either every accepted item was recorded or none was.
    """
    require_writer(by)
    results: list[ItemResult | None] = [
        item if isinstance(item, SettleError) else None for item in items
    ]
    first, repeats = _first_of_each_key(items)
    found = transfer_accounts(conn, list(first.values()))
    accepted: list[_Accepted] = []
    for index, new in first.items():
        try:
            accepted.append(_Accepted(index, new, transfer_currency(new, found, by)))
        except TransferRejected as exc:
            results[index] = exc
    if accepted:
        recorded = _insert(conn, accepted, by.idempotency_scope)
        for item in accepted:
            results[item.index] = recorded[item.new.idempotency_key]
    for index, earlier in repeats.items():
        results[index] = _repeat_result(items[index], items[earlier], results[earlier])
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _first_of_each_key(
    items: Sequence[NewTransfer | SettleError],
) -> tuple[dict[int, NewTransfer], dict[int, int]]:
    """{index: transfer} of the transfers whose key no earlier item holds, and {index:
    earlier index} of those that repeat an earlier item's key."""
    index_of: dict[str, int] = {}
    first: dict[int, NewTransfer] = {}
    repeats: dict[int, int] = {}
    for index, item in enumerate(items):
        if isinstance(item, NewTransfer):
            earlier = index_of.setdefault(item.idempotency_key, index)
            if earlier == index:
                first[index] = item
            else:
                repeats[index] = earlier
    return first, repeats


def _repeat_result(
    item: NewTransfer | SettleError, earlier: NewTransfer | SettleError, result: ItemResult | None
) -> ItemResult:
    """A key given twice in one batch: the second is a replay of the first."""
    assert isinstance(item, NewTransfer) and isinstance(earlier, NewTransfer)
    assert result is not None
    if item.fingerprint() != earlier.fingerprint():
        return IdempotencyKeyReused(
            f"idempotency_key {item.idempotency_key!r} is given to another transfer earlier in"
            " this batch"
        )
    return result


def _insert(
    conn: psycopg.Connection, accepted: Sequence[_Accepted], scope: str
) -> dict[str, ItemResult]:
    """{key: result} for `accepted`: inserted in one statement; an item whose key was taken
    before is answered the transfer recorded then, or `IdempotencyKeyReused`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _INSERT,
            (
                scope,
                [a.new.idempotency_key for a in accepted],
                [a.new.fingerprint() for a in accepted],
                [a.new.from_account_id for a in accepted],
                [a.new.to_account_id for a in accepted],
                [a.new.amount for a in accepted],
                [a.currency for a in accepted],
                [Jsonb(dict(a.new.metadata)) for a in accepted],
            ),
        )
        recorded: dict[str, ItemResult] = {row.pop("idempotency_key"): row for row in cur}
    taken = [a for a in accepted if a.new.idempotency_key not in recorded]
    if taken:
        recorded.update(_replays(conn, taken, scope))
    return recorded


def _replays(
    conn: psycopg.Connection, taken: Sequence[_Accepted], scope: str
) -> dict[str, ItemResult]:
    """{key: the transfer recorded under it before, or `IdempotencyKeyReused`} for items
    whose key another request took."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_BY_KEYS, (scope, [a.new.idempotency_key for a in taken]))
        rows = {row.pop("idempotency_key"): row for row in cur}
    results: dict[str, ItemResult] = {}
    for item in taken:
        key = item.new.idempotency_key
        # Inserts are not deleted: a key that conflicted has its row.
        row = rows[key]
        if row.pop("request_hash") != item.new.fingerprint():
            results[key] = IdempotencyKeyReused(
                f"idempotency_key {key!r} was already used for a different transfer"
            )
        else:
            results[key] = row
    return results
