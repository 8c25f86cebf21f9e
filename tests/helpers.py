"""Small builders for test data: each makes real rows through the real use cases."""

from __future__ import annotations

import uuid

import psycopg

from shared import ledger
from shared.requests import NewAccount, NewTransfer, NewUser


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def make_user(conn: psycopg.Connection, name: str = "Test User") -> int:
    return int(ledger.create_user(conn, NewUser(email=unique_email(), name=name))["id"])


def make_account(
    conn: psycopg.Connection,
    *,
    currency: str = "EUR",
    treasury: bool = False,
    user_id: int | None = None,
) -> int:
    owner = user_id if user_id is not None else make_user(conn)
    new = NewAccount(user_id=owner, currency=currency, allow_negative_balance=treasury)
    return int(ledger.create_account(conn, new)["id"])


def fund(conn: psycopg.Connection, treasury: int, account: int, amount: int) -> int:
    """Move `amount` from `treasury` to `account` and settle it now; returns the transfer id."""
    transfer = submit(conn, treasury, account, amount)
    status, _ = ledger.settle_transfer(conn, transfer)
    assert status == "settled"
    return transfer


def submit(conn: psycopg.Connection, source: int, target: int, amount: int) -> int:
    """Record a pending transfer (no message is sent); returns its id."""
    new = NewTransfer(
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        currency=None,
        idempotency_key=uuid.uuid4().hex,
    )
    return int(ledger.submit_transfer(conn, new).transfer["id"])


def balance(conn: psycopg.Connection, account: int) -> int:
    row = conn.execute("SELECT balance FROM accounts WHERE id = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])
