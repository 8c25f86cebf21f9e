"""Ledger invariants, checked over the whole database.

`find_violations` returns one line per broken rule (empty when the ledger is sound); `audit`
adds the counts `settle audit` prints. Besides the money, the rules hold the transfer events
(`shared.events`) to the transfers: every change has its event and every event its change.
Both read one snapshot (a repeatable-read, read-only transaction, or the caller's
transaction if one is open), so a ledger that is being written to is judged as of one
instant. They raise only driver errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg.pq import TransactionStatus

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

#: What the event sequence must say of each transfer. Retention deletes the oldest events, up
#: to `deleted_until`: a transfer last changed before then may have lost its events (and one
#: accepted before then its first ones), and is judged on those it has left.
_PARTS = {
    "t_state": "CASE WHEN t.status = 'failed' THEN 'failed (' || t.failure_code || ')'"
    " WHEN t.dead_lettered_at IS NOT NULL THEN 'dead-lettered at ' || t.dead_lettered_at"
    " ELSE t.status END",
    "e_state": "CASE WHEN e.status = 'failed' THEN 'failed (' || e.failure_code || ')'"
    " WHEN e.dead_lettered_at IS NOT NULL THEN 'dead-lettered at ' || e.dead_lettered_at"
    " ELSE e.status END",
    "kept_since": "coalesce((SELECT deleted_until FROM transfer_event_retention),"
    " '-infinity'::timestamptz)",
    # (the type of an event, the type of the next event of the same transfer) allowed
    "follows": "('transfer.accepted', 'transfer.settled'),"
    " ('transfer.accepted', 'transfer.failed'),"
    " ('transfer.accepted', 'transfer.dead_lettered'),"
    " ('transfer.dead_lettered', 'transfer.released'),"
    " ('transfer.dead_lettered', 'transfer.cancelled'),"
    " ('transfer.dead_lettered', 'transfer.settled'),"
    " ('transfer.dead_lettered', 'transfer.failed'),"
    " ('transfer.released', 'transfer.settled'), ('transfer.released', 'transfer.failed'),"
    " ('transfer.released', 'transfer.dead_lettered')",
}
_EVENT_CHECKS: list[tuple[str, str]] = [
    (
        # A change without its event: the transfer moved on, its events did not.
        "transfer {0} is {1}, but its latest event ({2}, id {3}) left it {4}",
        "SELECT t.id, {t_state}, e.type, e.id, {e_state} FROM transfers t"
        " JOIN (SELECT DISTINCT ON (transfer_id) * FROM transfer_events"
        " ORDER BY transfer_id, id DESC) e ON e.transfer_id = t.id"
        " WHERE (e.status, e.failure_code, e.dead_lettered_at)"
        " IS DISTINCT FROM (t.status, t.failure_code, t.dead_lettered_at) ORDER BY t.id",
    ),
    (
        "transfer {0} is {1} and has no event at all",
        "SELECT t.id, {t_state} FROM transfers t"
        " WHERE NOT EXISTS (SELECT 1 FROM transfer_events e WHERE e.transfer_id = t.id)"
        " AND greatest(t.created_at, t.finished_at, t.dead_lettered_at) > {kept_since}"
        " ORDER BY t.id",
    ),
    (
        # An event without its change, or a history with a change's event missing.
        "transfer {0}: event {1} ({2}) cannot follow {3}",
        "SELECT h.transfer_id, h.id, h.type, coalesce(h.before, 'nothing') FROM (SELECT e.id,"
        " e.transfer_id, e.type, lag(e.type) OVER (PARTITION BY e.transfer_id ORDER BY e.id)"
        " AS before FROM transfer_events e) h JOIN transfers t ON t.id = h.transfer_id"
        " WHERE CASE WHEN h.before IS NULL"
        " THEN h.type <> 'transfer.accepted' AND t.created_at > {kept_since}"
        " ELSE (h.before, h.type) NOT IN ({follows}) END ORDER BY h.id",
    ),
    (
        "event {0} ({1}) does not match transfer {2}: {3}",
        "SELECT e.id, e.type, e.transfer_id, CASE WHEN t.id IS NULL THEN 'no such transfer'"
        " WHEN (e.from_account_id, e.to_account_id) <> (t.from_account_id, t.to_account_id)"
        " THEN 'other accounts' ELSE 'its state is ' || {e_state} END"
        " FROM transfer_events e LEFT JOIN transfers t ON t.id = e.transfer_id"
        " WHERE t.id IS NULL"
        " OR (e.from_account_id, e.to_account_id) <> (t.from_account_id, t.to_account_id)"
        " OR e.type <> CASE WHEN e.type = 'transfer.accepted' AND e.status = 'pending'"
        " AND e.dead_lettered_at IS NULL THEN e.type"
        " ELSE transfer_event_type(e.status, e.failure_code, e.dead_lettered_at) END"
        " ORDER BY e.id",
    ),
]
_EVENT_CHECKS = [(template, query.format(**_PARTS)) for template, query in _EVENT_CHECKS]

#: `settle audit`'s default: a transfer pending longer than this is reported. Retries with
#: the default backoff give up after about a minute and a half, so a healthy transfer is
#: never this old; a dead-lettered one soon is, and should be looked at.
DEFAULT_PENDING_THRESHOLD = 300.0


@dataclass
class Report:
    """What `audit` found: counts for the summary, and one line per violation."""

    accounts: int = 0
    entries: int = 0
    events: int = 0
    transfers: dict[str, int] = field(default_factory=dict)  # status -> count
    dead_lettered: int = 0
    currencies: list[tuple[str, int, int]] = field(default_factory=list)  # code, accounts, sum
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = sum(self.transfers.values())
        by_status = ", ".join(
            f"{self.transfers.get(s, 0)} {s}" for s in ("settled", "failed", "pending")
        )
        out = [
            f"{self.accounts} accounts, {self.entries} entries, {total} transfers ({by_status};"
            f" {self.dead_lettered} of the pending dead-lettered)"
        ]
        out += [
            f"{code}: {n} accounts, balances sum to {total}" for code, n, total in self.currencies
        ]
        out.append(f"{self.events} transfer events")
        out += [f"VIOLATION: {line}" for line in self.violations]
        return out


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection) -> Iterator[None]:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        yield  # the caller's transaction is the snapshot (and may hold uncommitted rows)
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # It reads every row: no statement timeout, not even one the role has by default
        # (behind PgBouncer the pools' timeouts are the role's defaults).
        conn.execute("SET LOCAL statement_timeout = 0")
        yield


def _violations(conn: psycopg.Connection, pending_older_than_seconds: float | None) -> list[str]:
    found: list[str] = []
    for template, query in _CHECKS + _EVENT_CHECKS:
        for row in conn.execute(query).fetchall():
            found.append(template.format(*row))
    if pending_older_than_seconds is not None:
        rows = conn.execute(
            "SELECT id, round(extract(epoch FROM now() - created_at)), dead_lettered_at,"
            " last_error FROM transfers WHERE status = 'pending'"
            " AND created_at < now() - make_interval(secs => %s) ORDER BY id",
            (pending_older_than_seconds,),
        ).fetchall()
        for tid, age, parked_at, error in rows:
            line = f"transfer {tid} has been pending for {age}s"
            if parked_at is not None:
                line += (
                    f" (dead-lettered at {parked_at.isoformat()}: {error};"
                    f" `settle dead-letters retry {tid}` sends it again)"
                )
            elif error:
                line += f" (last error: {error})"
            found.append(line)
    return found


def find_violations(
    conn: psycopg.Connection, *, pending_older_than_seconds: float | None = None
) -> list[str]:
    """Every broken ledger rule, one line each: per currency the balances sum to zero, every
    balance equals its entries, no forbidden negative balance, every settled transfer has one
    debit and one credit matching it, failed and pending transfers have no entries; every
    transfer's latest event leaves it in the state it is in, every transfer has events
    (unless retention deleted them), each history runs from accepted through changes that
    can follow one another, and every event matches its transfer and its own type. With
    `pending_older_than_seconds`, a transfer still pending after that long counts too."""
    with _snapshot(conn):
        return _violations(conn, pending_older_than_seconds)


def audit(conn: psycopg.Connection, *, pending_older_than_seconds: float | None) -> Report:
    """`find_violations` plus the counts of accounts, entries and transfers, from one
    snapshot."""
    with _snapshot(conn):
        report = Report()
        report.accounts, report.entries, report.events = conn.execute(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM entries),"
            " (SELECT count(*) FROM transfer_events)"
        ).fetchone() or (0, 0, 0)
        report.transfers = dict(
            conn.execute("SELECT status, count(*) FROM transfers GROUP BY status").fetchall()
        )
        row = conn.execute(
            "SELECT count(*) FROM transfers WHERE dead_lettered_at IS NOT NULL"
        ).fetchone()
        report.dead_lettered = int(row[0]) if row else 0
        report.currencies = [
            (str(code), int(n), int(total))
            for code, n, total in conn.execute(
                "SELECT currency, count(*), sum(balance) FROM accounts GROUP BY currency"
                " ORDER BY currency"
            ).fetchall()
        ]
        report.violations = _violations(conn, pending_older_than_seconds)
    return report
