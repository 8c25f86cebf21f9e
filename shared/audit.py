"""Ledger invariants, checked over the whole database.

`find_violations` returns one line per broken rule (empty when the ledger is sound); it
raises only driver errors.
"""

from __future__ import annotations

import psycopg

#: (rule, query returning one row per violation, formatted into the report line)
_CHECKS: list[tuple[str, str]] = [
    (
        "balances of currency {0} sum to {1}, not 0",
        "SELECT currency, sum(balance) FROM accounts GROUP BY currency HAVING sum(balance) <> 0",
    ),
    (
        "account {0} has balance {1} but its entries sum to {2}",
        "SELECT a.id, a.balance, coalesce(e.total, 0) FROM accounts a"
        " LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) e"
        " ON e.account_id = a.id WHERE a.balance <> coalesce(e.total, 0)",
    ),
    (
        "account {0} may not go negative but has balance {1}",
        "SELECT id, balance FROM accounts WHERE NOT allow_negative_balance AND balance < 0",
    ),
    (
        "settled transfer {0} has {1} debit(s) and {2} credit(s) instead of one each",
        "SELECT t.id, count(e.id) FILTER (WHERE e.amount < 0), count(e.id) FILTER (WHERE"
        " e.amount > 0) FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id"
        " WHERE t.status = 'settled' GROUP BY t.id"
        " HAVING count(e.id) FILTER (WHERE e.amount < 0) <> 1"
        " OR count(e.id) FILTER (WHERE e.amount > 0) <> 1",
    ),
    (
        "settled transfer {0} has entries that do not match its amount and accounts",
        "SELECT t.id FROM transfers t JOIN entries e ON e.transfer_id = t.id"
        " WHERE t.status = 'settled' GROUP BY t.id, t.amount, t.from_account_id,"
        " t.to_account_id HAVING sum(e.amount) <> 0"
        " OR bool_or(e.amount < 0 AND (e.account_id <> t.from_account_id"
        " OR e.amount <> -t.amount))"
        " OR bool_or(e.amount > 0 AND (e.account_id <> t.to_account_id OR e.amount <> t.amount))",
    ),
    (
        "{1} transfer {0} has {2} ledger entries (it should have none)",
        "SELECT t.id, t.status, count(*) FROM transfers t JOIN entries e ON e.transfer_id = t.id"
        " WHERE t.status <> 'settled' GROUP BY t.id, t.status",
    ),
]


def find_violations(
    conn: psycopg.Connection, *, pending_older_than_seconds: float | None = None
) -> list[str]:
    """Every broken ledger rule, one line each. With `pending_older_than_seconds`, a transfer
    still pending after that long counts as a violation too."""
    found: list[str] = []
    for template, query in _CHECKS:
        for row in conn.execute(query).fetchall():
            found.append(template.format(*row))
    if pending_older_than_seconds is not None:
        rows = conn.execute(
            "SELECT id, round(extract(epoch FROM now() - created_at)) FROM transfers"
            " WHERE status = 'pending' AND created_at < now() - make_interval(secs => %s)",
            (pending_older_than_seconds,),
        ).fetchall()
        found.extend(f"transfer {tid} has been pending for {age}s" for tid, age in rows)
    return found
