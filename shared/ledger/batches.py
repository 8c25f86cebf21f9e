"""Submitting many transfers at once (`POST /transfers/batch`): each item checked on its own,
the accepted ones recorded in one statement, each answered in request order.

Every item carries its own idempotency key, scoped like the Idempotency-Key header of a single
transfer (`operations.submit_transfer`): a replay of the same item answers the transfer
recorded the first time, the same key with another transfer is that item's
`IdempotencyKeyReused`. So retrying a whole batch answers the same per-item results and
records nothing twice. An item refused (a malformed transfer, an unknown account, a currency
mismatch) refuses that item only, and nothing of it is written.

An atomic batch is all or nothing: every item accepted and recorded as one chain (whose
transfers the workers settle together or fail together, `settle_transfers` in migration
0014), or none recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.db import Row
from shared.errors import (
    IdempotencyKeyReused,
    NotAttempted,
    SettleError,
    TransferRejected,
)
from shared.ledger.auth import Principal, require_writer
from shared.ledger.commands import NewTransfer
from shared.ledger.operations import (
    TRANSFER_COLUMNS,
    TRANSFER_FIELDS,
    transfer_accounts,
    transfer_currency,
)

#: One item's result: the transfer recorded (or recorded before, for a replay), or the
#: error that refused the item.
ItemResult = Row | SettleError


@dataclass(frozen=True)
class BatchOutcome:
    """What submitting a batch did: one result per item, in request order, and whether the
    batch was recorded (always, unless an atomic batch was refused whole)."""

    results: list[ItemResult]
    recorded: bool


@dataclass(frozen=True)
class _Accepted:
    index: int
    new: NewTransfer
    currency: str


_INSERT = sql.SQL(
    "INSERT INTO transfers (idempotency_scope, idempotency_key, request_hash,"
    " from_account_id, to_account_id, amount, currency, metadata, chain_id)"
    " SELECT %s, i.key, i.hash, i.src, i.dst, i.amount, i.currency, i.metadata, %s"
    " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::text[], %s::jsonb[]) WITH ORDINALITY"
    " AS i (key, hash, src, dst, amount, currency, metadata, n)"
    " ORDER BY i.n"
    " ON CONFLICT (idempotency_scope, idempotency_key) DO NOTHING"
    " RETURNING idempotency_key, {}"
).format(TRANSFER_COLUMNS)

_BY_KEYS = sql.SQL(
    "SELECT t.idempotency_key, t.request_hash, t.chain_id, c.legs, {} FROM transfers t"
    " LEFT JOIN transfer_chains c ON c.id = t.chain_id"
    " WHERE t.idempotency_scope = %s AND t.idempotency_key = ANY(%s)"
).format(sql.SQL(", ").join(sql.Identifier("t", field) for field in TRANSFER_FIELDS))

_NEW_CHAIN = "INSERT INTO transfer_chains (legs) VALUES (%s) RETURNING id"


def submit_transfers(
    conn: psycopg.Connection,
    items: Sequence[NewTransfer | SettleError],
    *,
    by: Principal,
    atomic: bool = False,
) -> BatchOutcome:
    """Record the pending transfers `items` ask for; returns one result per item in their
    order: the transfer (new, or the one recorded earlier under the item's key) or the error
    refusing it (an item that is already an error stays one).

    Each item on its own, unless `atomic`: then either every item is accepted and they are
    recorded as one chain, or nothing is recorded, the refused items answer their errors and
    the others `NotAttempted`. Replaying a whole atomic batch answers its chain; an item
    whose key another request took (not as a leg of a chain of exactly these transfers)
    is refused with `IdempotencyKeyReused`.

    A few round trips whatever the size: the accounts read, one insert of every accepted item
    (after its chain's, when atomic), and a read of the transfers whose keys were taken
    before. Raises `ReadOnlyKey` for a read-only key (nothing is written); driver errors
    propagate, and then either every accepted item was recorded or none was.
    """
    require_writer(by)
    results: list[ItemResult | None] = [
        item if isinstance(item, SettleError) else None for item in items
    ]
    first, repeats = _first_of_each_key(items)
    found = transfer_accounts(conn, list(first.values())) if first else {}
    accepted: list[_Accepted] = []
    for index, new in first.items():
        try:
            accepted.append(_Accepted(index, new, transfer_currency(new, found, by)))
        except TransferRejected as exc:
            results[index] = exc
    refused = atomic and (
        any(result is not None for result in results)
        or any(_differs(items[i], items[earlier]) for i, earlier in repeats.items())
    )
    recorded = True
    if accepted and not refused:
        if atomic:
            by_key, recorded = _insert_chain(conn, accepted, by.idempotency_scope)
        else:
            by_key = _insert(conn, accepted, by.idempotency_scope, chain_id=None)
        for item in accepted:
            results[item.index] = by_key.get(item.new.idempotency_key)
    for index, earlier in repeats.items():
        if results[earlier] is not None or _differs(items[index], items[earlier]):
            results[index] = _repeat_result(items[index], items[earlier], results[earlier])
    if refused or not recorded:
        return _refused(results)
    assert all(result is not None for result in results)
    return BatchOutcome(results, recorded=True)  # type: ignore[arg-type]


def _refused(results: Sequence[ItemResult | None]) -> BatchOutcome:
    """An atomic batch refused whole: the items that failed keep their errors, the others
    were not attempted (and nothing was recorded)."""
    failed = sum(isinstance(result, SettleError) for result in results)
    not_attempted = NotAttempted(
        f"not recorded: {failed} other transfer(s) of this atomic batch were refused"
    )
    return BatchOutcome(
        [result if isinstance(result, SettleError) else not_attempted for result in results],
        recorded=False,
    )


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


def _differs(item: NewTransfer | SettleError, earlier: NewTransfer | SettleError) -> bool:
    assert isinstance(item, NewTransfer) and isinstance(earlier, NewTransfer)
    return item.fingerprint() != earlier.fingerprint()


def _repeat_result(
    item: NewTransfer | SettleError, earlier: NewTransfer | SettleError, result: ItemResult | None
) -> ItemResult:
    """A key given twice in one batch: the second is a replay of the first."""
    assert isinstance(item, NewTransfer)
    if _differs(item, earlier):
        return IdempotencyKeyReused(
            f"idempotency_key {item.idempotency_key!r} is given to another transfer earlier in"
            " this batch"
        )
    assert result is not None
    return result


def _insert(
    conn: psycopg.Connection, accepted: Sequence[_Accepted], scope: str, *, chain_id: int | None
) -> dict[str, ItemResult]:
    """{key: result} for `accepted`, inserted in one statement (as legs of `chain_id` when
    given); an item whose key was taken before is answered as `_taken` says."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _INSERT,
            (
                scope,
                chain_id,
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
    if chain_id is not None:
        return recorded  # the caller rolls back a chain whose keys were taken
    taken = [a for a in accepted if a.new.idempotency_key not in recorded]
    if taken:
        recorded.update(_taken(conn, taken, scope))
    return recorded


class _KeysTaken(Exception):
    """Rolls back a chain some of whose keys other requests took."""


def _insert_chain(
    conn: psycopg.Connection, accepted: Sequence[_Accepted], scope: str
) -> tuple[dict[str, ItemResult], bool]:
    """Record `accepted` as a new chain, in one transaction: ({key: transfer}, True). When
    keys were taken before, nothing is recorded: a replay of one chain of exactly these
    transfers answers it, ({key: transfer}, True); otherwise ({key: error} for the items
    whose keys were taken, False)."""
    try:
        with conn.transaction():
            row = conn.execute(_NEW_CHAIN, (len(accepted),)).fetchone()
            assert row is not None
            recorded = _insert(conn, accepted, scope, chain_id=int(row[0]))
            if len(recorded) < len(accepted):
                raise _KeysTaken
            return recorded, True
    except _KeysTaken:
        pass
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_BY_KEYS, (scope, [a.new.idempotency_key for a in accepted]))
        rows = {row["idempotency_key"]: row for row in cur}
    chains = {row["chain_id"] for row in rows.values()}
    replay = (
        len(rows) == len(accepted)
        and len(chains) == 1
        and None not in chains
        and all(row["legs"] == len(accepted) for row in rows.values())
    )
    found = _taken(conn, [a for a in accepted if a.new.idempotency_key in rows], scope, rows=rows)
    if replay and not any(isinstance(result, SettleError) for result in found.values()):
        return found, True
    return {
        key: result
        if isinstance(result, SettleError)
        else IdempotencyKeyReused(
            f"idempotency_key {key!r} was already used outside this atomic batch"
        )
        for key, result in found.items()
    }, False


def _taken(
    conn: psycopg.Connection,
    taken: Sequence[_Accepted],
    scope: str,
    *,
    rows: dict[str, Row] | None = None,
) -> dict[str, ItemResult]:
    """{key: the transfer recorded under it before, or `IdempotencyKeyReused`} for items
    whose key another request took (`rows`: those transfers, when already read)."""
    if rows is None:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_BY_KEYS, (scope, [a.new.idempotency_key for a in taken]))
            rows = {row["idempotency_key"]: row for row in cur}
    results: dict[str, ItemResult] = {}
    for item in taken:
        key = item.new.idempotency_key
        # Transfers are never deleted: a key that conflicted has its row.
        row = dict(rows[key])
        if row.pop("request_hash") != item.new.fingerprint():
            results[key] = IdempotencyKeyReused(
                f"idempotency_key {key!r} was already used for a different transfer"
            )
            continue
        for internal in ("idempotency_key", "chain_id", "legs"):
            row.pop(internal)
        results[key] = row
    return results
