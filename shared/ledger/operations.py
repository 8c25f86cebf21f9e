"""Use cases on users, accounts, transfers and ledger entries; each takes a connection.

Connections are autocommit, so a single statement is its own transaction (one round trip);
use cases with several writes open `conn.transaction()`. Domain conditions raise the classes
of `shared.errors`; driver errors propagate for the caller's retry policy.

Use cases a caller can reach take `by`, the principal the request acts for. A user sees only
its own user, accounts, their entries, and transfers touching its accounts, and spends only
from its own accounts; anything else is reported as not existing (`*NotFound`), so that ids
cannot be probed. Creating users and accounts is for operators (`OperatorOnly`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.db import Row
from shared.errors import (
    AccountNotFound,
    CurrencyMismatch,
    EmailTaken,
    IdempotencyKeyReused,
    SameAccount,
    TransferNotFound,
    UnknownTransferAccount,
    UserNotFound,
)
from shared.ledger.auth import Principal, require_operator, require_writer
from shared.ledger.commands import NewAccount, NewTransfer, NewUser
from shared.ledger.paging import Page, page_of
from shared.ledger.paging import decode_cursor as _decode_cursor
from shared.ledger.paging import encode_cursor as _encode_cursor

#: The fields of a transfer as clients see it (the HTTP contract's order).
TRANSFER_FIELDS = (
    "id", "status", "from_account_id", "to_account_id", "amount", "currency", "failure_code",
    "attempts", "created_at", "settled_at", "dead_lettered_at", "metadata",
)  # fmt: skip
#: Those fields as a column list, for every query that answers a transfer.
TRANSFER_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, TRANSFER_FIELDS))


def _one(
    conn: psycopg.Connection, query: str | sql.Composed, params: tuple[object, ...]
) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchone()


def create_user(conn: psycopg.Connection, new: NewUser, *, by: Principal) -> Row:
    """Insert a user. Raises `OperatorOnly` unless `by` is an operator, `ReadOnlyKey` when it
    is read-only, `EmailTaken` when the email is in use."""
    require_operator(by)
    require_writer(by)
    try:
        row = _one(
            conn,
            "INSERT INTO users (email, name) VALUES (%s, %s) RETURNING id, email, name, created_at",
            (new.email, new.name),
        )
    except pg_errors.UniqueViolation:
        raise EmailTaken(f"a user with email {new.email} already exists") from None
    assert row is not None
    return row


def get_user(conn: psycopg.Connection, user_id: int, *, by: Principal) -> Row:
    """The user with `user_id`. Raises `UserNotFound`, also when it is not `by`'s."""
    if not by.owns(user_id):
        raise UserNotFound(f"user {user_id} does not exist")
    row = _one(conn, "SELECT id, email, name, created_at FROM users WHERE id = %s", (user_id,))
    if row is None:
        raise UserNotFound(f"user {user_id} does not exist")
    return row


def create_account(conn: psycopg.Connection, new: NewAccount, *, by: Principal) -> Row:
    """Insert an account with a zero balance. Raises `OperatorOnly` unless `by` is an
    operator, `ReadOnlyKey` when it is read-only, `UserNotFound` for an unknown owner."""
    require_operator(by)
    require_writer(by)
    try:
        row = _one(
            conn,
            "INSERT INTO accounts (user_id, currency, allow_negative_balance)"
            " VALUES (%s, %s, %s) RETURNING id, user_id, currency, balance, "
            "allow_negative_balance, created_at",
            (new.user_id, new.currency, new.allow_negative_balance),
        )
    except pg_errors.ForeignKeyViolation:
        raise UserNotFound(f"user {new.user_id} does not exist") from None
    assert row is not None
    return row


def get_account(conn: psycopg.Connection, account_id: int, *, by: Principal) -> Row:
    """The account with `account_id`, with its balance. Raises `AccountNotFound`, also when
    it is not `by`'s."""
    row = _one(
        conn,
        "SELECT id, user_id, currency, balance, allow_negative_balance, created_at FROM accounts"
        " WHERE id = %s",
        (account_id,),
    )
    if row is None or not by.owns(row["user_id"]):
        raise AccountNotFound(f"account {account_id} does not exist")
    return row


def encode_cursor(last_id: int) -> str:
    """The cursor after the row with id `last_id`, in a list ordered by id (`paging`)."""
    return _encode_cursor("e", last_id)


def decode_cursor(cursor: str) -> int:
    """The id after which a page starts. Raises `InvalidCursor` for a foreign string."""
    return _decode_cursor(cursor, "e")[0]


def list_entries(
    conn: psycopg.Connection, account_id: int, *, limit: int, cursor: str | None, by: Principal
) -> Page:
    """Ledger entries of one account, oldest first, `limit` at a time.

    Raises `AccountNotFound` (also when the account is not `by`'s) and `InvalidCursor`.
    """
    after = decode_cursor(cursor) if cursor else 0
    get_account(conn, account_id, by=by)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, transfer_id, account_id, amount, created_at FROM entries"
            " WHERE account_id = %s AND id > %s"
            " ORDER BY id LIMIT %s",
            (account_id, after, limit + 1),
        )
        rows = cur.fetchall()
    return page_of(rows, limit, lambda last: encode_cursor(last["id"]))


def submit_transfer(conn: psycopg.Connection, new: NewTransfer, *, by: Principal) -> Row:
    """Record a pending transfer, or return the one `by` recorded earlier under the same
    Idempotency-Key (keys are scoped to `by.idempotency_scope`).

    Raises `ReadOnlyKey` for a read-only key, `SameAccount`, `UnknownTransferAccount` (also
    when a user's key names a source account that is not its own), `CurrencyMismatch`
    (nothing written), and `IdempotencyKeyReused` when the key was used for a different
    request.
    """
    require_writer(by)
    if new.from_account_id == new.to_account_id:
        raise SameAccount("from_account_id and to_account_id must differ")
    found = transfer_accounts(conn, [new])
    currency = transfer_currency(new, found, by)
    row = _one(
        conn,
        sql.SQL(
            "INSERT INTO transfers (idempotency_scope, idempotency_key, request_hash,"
            " from_account_id, to_account_id, amount, currency, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_scope, idempotency_key) DO NOTHING RETURNING {}"
        ).format(TRANSFER_COLUMNS),
        (
            by.idempotency_scope,
            new.idempotency_key,
            new.fingerprint(),
            new.from_account_id,
            new.to_account_id,
            new.amount,
            currency,
            Jsonb(dict(new.metadata)),
        ),
    )
    if row is not None:
        return row
    # The key was used before (a replay, or a concurrent request that won the insert).
    existing = _by_key(conn, new, by.idempotency_scope)
    assert existing is not None
    return existing


def transfer_accounts(conn: psycopg.Connection, transfers: Sequence[NewTransfer]) -> dict[int, Row]:
    """{id: account (id, currency, user_id)} of every account `transfers` name that exists."""
    ids = {t.from_account_id for t in transfers} | {t.to_account_id for t in transfers}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT id, currency, user_id FROM accounts WHERE id = ANY(%s)", (sorted(ids),))
        return {row["id"]: row for row in cur.fetchall()}


def transfer_currency(new: NewTransfer, found: dict[int, Row], by: Principal) -> str:
    """The currency of `new`, whose accounts (when they exist) are in `found`. Raises
    `SameAccount`, `UnknownTransferAccount` or `CurrencyMismatch` as `submit_transfer`."""
    if new.from_account_id == new.to_account_id:
        raise SameAccount("from_account_id and to_account_id must differ")
    source = found.get(new.from_account_id)
    # Money leaves only an account of the key's user: someone else's looks like no account.
    if source is None or not by.owns(source["user_id"]):
        raise UnknownTransferAccount(f"from_account_id {new.from_account_id} does not exist")
    target = found.get(new.to_account_id)
    if target is None:
        raise UnknownTransferAccount(f"to_account_id {new.to_account_id} does not exist")
    currency = str(source["currency"])
    if target["currency"] != currency:
        raise CurrencyMismatch(
            f"account {new.from_account_id} holds {currency},"
            f" account {new.to_account_id} holds {target['currency']}"
        )
    if new.currency is not None and new.currency != currency:
        raise CurrencyMismatch(f"the accounts hold {currency}, not {new.currency}")
    return currency


def _by_key(conn: psycopg.Connection, new: NewTransfer, scope: str) -> Row | None:
    row = _one(
        conn,
        sql.SQL(
            "SELECT request_hash, {} FROM transfers"
            " WHERE idempotency_scope = %s AND idempotency_key = %s"
        ).format(TRANSFER_COLUMNS),
        (scope, new.idempotency_key),
    )
    if row is None:
        return None
    if row.pop("request_hash") != new.fingerprint():
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return row


_TRANSFER = sql.SQL("SELECT {} FROM transfers WHERE id = %s").format(TRANSFER_COLUMNS)
_USERS_TRANSFER = sql.SQL(
    "SELECT {} FROM transfers t WHERE id = %s AND EXISTS ("
    "SELECT 1 FROM accounts a WHERE a.id IN (t.from_account_id, t.to_account_id)"
    " AND a.user_id = %s)"
).format(TRANSFER_COLUMNS)


def get_transfer(conn: psycopg.Connection, transfer_id: int, *, by: Principal) -> Row:
    """The transfer with `transfer_id`. Raises `TransferNotFound`, also when neither of its
    accounts is `by`'s (a user sees the transfers it sent and those it received)."""
    if by.user_id is None:
        row = _one(conn, _TRANSFER, (transfer_id,))
    else:
        row = _one(conn, _USERS_TRANSFER, (transfer_id, by.user_id))
    if row is None:
        raise TransferNotFound(f"transfer {transfer_id} does not exist")
    return row


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a transfer's settlement is attempted: a first attempt
    and up to `max_retries` more (TRANSFER_MAX_RETRIES), the backoff starting at
    `min_backoff_ms` and doubling up to `max_backoff_ms`, with jitter. Postgres keeps the
    count (`transfers.failed_attempts`), so the budget holds across every message that
    carries a transfer."""

    max_retries: int = 10
    min_backoff_ms: int = 100
    max_backoff_ms: int = 30_000

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def params(self) -> tuple[int, int, int]:
        """The arguments the SQL functions take, in their order."""
        return (self.max_attempts, self.min_backoff_ms, self.max_backoff_ms)


#: The policy of the default settings (what a direct call of `settle_transfers` gets).
DEFAULT_RETRY = RetryPolicy()


class Outcome(NamedTuple):
    """What settling did to one transfer.

    `status`: 'settled', 'failed' (with `failure_code`), 'missing', 'retry' (this attempt
    failed transiently: `retry_ms` is the backoff before the next, `detail` the error),
    'dead-lettered' (this call spent the transfer's retry budget, `detail` the last error)
    or 'skipped' (pending, but not the caller's to attempt now: another transaction holds
    it, it waits for another message's retry, or it was dead-lettered before).
    `latency`: seconds from its acceptance to this call's decision when this call is what
    settled or failed it (None otherwise), so that a decision made now is told from the
    redelivery of one made before."""

    status: str
    failure_code: str | None
    latency: float | None
    retry_ms: int | None = None
    detail: str | None = None


def settle_transfer(conn: psycopg.Connection, transfer_id: int) -> tuple[str, str | None]:
    """Settle (or fail, for insufficient funds) one pending transfer in one transaction.

    Returns (status, failure_code), the status as `Outcome` names it. A transfer that is no
    longer pending is left alone, so delivering the same message twice is harmless. Driver
    errors (lost connection, statement timeout) propagate.
    """
    outcome = settle_transfers(conn, [transfer_id])[transfer_id]
    return outcome.status, outcome.failure_code


#: The ids `settle_transfers(..., fill=n)` settles: the given ones, and up to n of them
#: in all with the other pending transfers sent longest ago that the given message may
#: attempt (the SQL function's own rule) and no other transaction holds, locked here so
#: that concurrent settlements take disjoint ones. Only transfers with two attempts left or
#: more: a failed attempt never spends the budget of a transfer its message does not
#: carry, so a message dead-letters only its own (its last attempt comes from a message
#: that carries it, its own or the sweeper's). Never a leg of a chain (an atomic batch): a
#: chain is locked whole under its own row's lock, and fills taking some of its legs in
#: concurrent settlements would leave no settlement all of them. The partial index
#: `transfers_pending` serves it; the locks belong to the function's transaction, which is
#: the same statement.
_FILLED_IDS = sql.SQL("""
    %(ids)s::bigint[] || ARRAY(
        SELECT tr.id FROM transfers tr
         WHERE tr.status = 'pending' AND tr.dead_lettered_at IS NULL
           AND tr.chain_id IS NULL
           AND (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                OR tr.retry_message = %(message)s)
           AND tr.failed_attempts < %(max)s - 1
           AND tr.id <> ALL (%(ids)s::bigint[])
         ORDER BY tr.enqueued_at
         LIMIT %(more)s
           FOR NO KEY UPDATE SKIP LOCKED)
""")
_SETTLE = sql.SQL(
    "SELECT id, status, failure_code, latency, retry_ms, detail"
    " FROM settle_transfers({ids}, %(message)s, %(max)s, %(min)s, %(max_backoff)s)"
)


def settle_transfers(
    conn: psycopg.Connection,
    transfer_ids: Sequence[int],
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    message_id: str | None = None,
    fill: int = 0,
) -> dict[int, Outcome]:
    """Settle a batch of pending transfers in one transaction and one round trip (the SQL
    function `settle_transfers`), each with its own outcome, within their retry budget.

    `message_id` names the message making the attempt: a transfer whose retry another
    message is to make is skipped until that retry is due. With `fill`, a batch of fewer
    ids is topped up to `fill` with the other pending transfers that have waited longest
    and that no other settlement holds, so that a backlog of small messages is settled in
    full batches, oldest first (docs/architecture.md, "Settlement in batches"); their
    outcomes are returned too, and a failed attempt on them is this message's to retry.

    Returns an `Outcome` for every distinct id; failures are decided in ascending id order,
    so a transfer sees the balances the earlier ones left. A lock timeout or deadlock on
    the accounts is no error: the transfers whose accounts are free settle, a failed
    attempt is counted on the others ('retry', or 'dead-lettered' once the budget is
    spent), in the same transaction. Other driver errors (lost connection, statement
    timeout) propagate and nothing is written.
    """
    ids = list(transfer_ids)
    more = fill - len(set(ids))
    params = {"ids": ids, "message": message_id, "more": more}
    policy = dict(zip(("max", "min", "max_backoff"), retry.params(), strict=True))
    with conn.cursor() as cur:
        ids_sql = _FILLED_IDS if more > 0 else sql.SQL("%(ids)s::bigint[]")
        cur.execute(_SETTLE.format(ids=ids_sql), {**params, **policy})
        return {
            int(tid): Outcome(
                str(status), code, None if latency is None else float(latency), delay, detail
            )
            for tid, status, code, latency, delay, detail in cur.fetchall()
        }


def record_failed_attempt(
    conn: psycopg.Connection,
    transfer_ids: Sequence[int],
    error: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    message_id: str | None = None,
) -> dict[int, Outcome]:
    """Count a failed settlement attempt that ended in a driver error (the SQL function
    `record_failed_attempt`) on those of `transfer_ids` that `message_id` may attempt and
    no other transaction holds, keeping `error`: 'retry' with the backoff before the next
    attempt, or 'dead-lettered' for those whose budget it spent. Never waits for a lock."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, status, retry_ms"
            " FROM record_failed_attempt(%s::bigint[], %s, %s, %s, %s, %s)",
            (list(transfer_ids), message_id, error, *retry.params()),
        )
        return {
            int(tid): Outcome(str(status), None, None, delay, error)
            for tid, status, delay in cur.fetchall()
        }


def claim_stale_pending(conn: psycopg.Connection, *, grace_seconds: float, batch: int) -> list[int]:
    """Ids of transfers pending for longer than `grace_seconds` since they were last sent
    and since their next retry was due, oldest first, marked as sent now so the next sweep
    skips them for another grace period. Left out: dead-lettered transfers (only an operator
    sends them again), transfers waiting out a retry's backoff (their message comes then),
    and those another transaction holds (a settlement in flight; never waits for one)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE transfers SET enqueued_at = now() WHERE id IN ("
            " SELECT id FROM transfers WHERE status = 'pending' AND dead_lettered_at IS NULL"
            " AND enqueued_at < now() - make_interval(secs => %s)"
            " AND (next_attempt_at IS NULL OR next_attempt_at < now() - make_interval(secs => %s))"
            " ORDER BY enqueued_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED)"
            " RETURNING id",
            (grace_seconds, grace_seconds, batch),
        )
        return sorted(row[0] for row in cur.fetchall())
