"""The demo data `make run` seeds: a treasury, two users with funded EUR accounts, and a
fresh pair of demo API keys (an operator's and Alice's) each time it runs.

Idempotent: seeding twice finds the same rows (users by email, funding by idempotency key).
Driver errors propagate.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewAccount, NewTransfer, NewUser

CURRENCY = "EUR"
OPENING_BALANCE = 100_000  # 1,000.00 EUR in cents
#: Label of the keys `issue_demo_keys` makes; each run revokes the previous run's.
DEMO_KEY_LABEL = "demo"


@dataclass(frozen=True)
class Demo:
    treasury_account_id: int
    alice_user_id: int
    alice_account_id: int
    bob_user_id: int
    bob_account_id: int


def _user_with_account(
    conn: psycopg.Connection, email: str, name: str, treasury: bool
) -> tuple[int, int]:
    row = conn.execute(
        "SELECT u.id, a.id FROM users u JOIN accounts a ON a.user_id = u.id"
        " WHERE u.email = %s AND a.currency = %s ORDER BY a.id LIMIT 1",
        (email, CURRENCY),
    ).fetchone()
    if row is not None:
        return row[0], row[1]
    user = ledger.create_user(conn, NewUser(email=email, name=name), by=SYSTEM)
    account = ledger.create_account(
        conn,
        NewAccount(user_id=user["id"], currency=CURRENCY, allow_negative_balance=treasury),
        by=SYSTEM,
    )
    return user["id"], account["id"]


def seed_demo(conn: psycopg.Connection) -> Demo:
    """Create (or find) the demo rows and settle the opening balances synchronously."""
    with conn.transaction():
        _, treasury = _user_with_account(conn, "treasury@settle.example", "Treasury", True)
        alice_user, alice = _user_with_account(conn, "alice@settle.example", "Alice", False)
        bob_user, bob = _user_with_account(conn, "bob@settle.example", "Bob", False)
    for account_id in (alice, bob):
        funding = NewTransfer(
            from_account_id=treasury,
            to_account_id=account_id,
            amount=OPENING_BALANCE,
            currency=CURRENCY,
            idempotency_key=f"demo-opening-balance-{account_id}",
        )
        ledger.settle_transfer(conn, ledger.submit_transfer(conn, funding, by=SYSTEM)["id"])
    return Demo(treasury, alice_user, alice, bob_user, bob)


@dataclass(frozen=True)
class DemoKeys:
    """The secrets of this run's demo API keys."""

    operator: str
    alice: str


def issue_demo_keys(conn: psycopg.Connection, demo: Demo) -> DemoKeys:
    """Revoke the demo keys of earlier runs and make new ones: an operator key and a key of
    Alice's. Keys are stored hashed, so a key is shown only by the run that made it."""
    with conn.transaction():
        auth.revoke_labelled(conn, DEMO_KEY_LABEL)
        operator = auth.create_key(conn, user_id=None, label=DEMO_KEY_LABEL)
        alice = auth.create_key(conn, user_id=demo.alice_user_id, label=DEMO_KEY_LABEL)
    return DemoKeys(operator=operator.key, alice=alice.key)
