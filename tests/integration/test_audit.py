"""`settle audit` and the ledger invariants behind it, on the real database.

Each broken rule is made by corrupting rows inside a transaction that is rolled back, so the
test database is never left corrupt; the command itself runs against a scratch database of
its own, since it audits a whole database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from shared.config import Settings
from shared.ledger import dead_letters
from shared.ledger import operations as ledger
from shared.ledger.audit import audit, find_violations
from shared.testing.scratch import scratch_database
from tests.helpers import fund, make_account, submit
from tests.scratch import settle


@pytest.fixture
def scratch(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url) as url:
        yield url


def small_ledger(conn: psycopg.Connection) -> dict[str, int]:
    """A treasury funding two accounts, one payment between them, one that failed for lack
    of funds, and one still pending."""
    treasury = make_account(conn, treasury=True)
    payer, payee = make_account(conn), make_account(conn)
    fund(conn, treasury, payer, 5_000)
    paid = submit(conn, payer, payee, 1_200)
    assert ledger.settle_transfer(conn, paid) == ("settled", None)
    refused = submit(conn, payee, payer, 999_999)
    assert ledger.settle_transfer(conn, refused) == ("failed", "insufficient_funds")
    waiting = submit(conn, payer, payee, 100)
    return {
        "treasury": treasury,
        "payer": payer,
        "payee": payee,
        "paid": paid,
        "refused": refused,
        "waiting": waiting,
    }


def audit_env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url}


def test_auditing_a_sound_ledger_prints_its_counts_and_exits_zero(scratch: str) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        small_ledger(conn)

    done = settle("audit", env=audit_env(scratch))

    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "3 accounts, 4 entries, 4 transfers (2 settled, 1 failed, 1 pending;"
        " 0 of the pending dead-lettered)"
    )
    assert "EUR: 3 accounts, balances sum to 0" in lines
    # Accepted and settled (or failed) for each of three, accepted for the pending one.
    assert "7 transfer events" in lines
    assert lines[-1] == "settle audit: ok (no violation; pending threshold 300s)"
    assert "VIOLATION" not in done.stdout


def test_auditing_a_corrupted_balance_names_the_account_and_exits_one(scratch: str) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        ids = small_ledger(conn)
        conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id = %s", (ids["payee"],))

    done = settle("audit", env=audit_env(scratch))

    assert done.returncode == 1, done.stdout
    violations = [line for line in done.stdout.splitlines() if line.startswith("VIOLATION")]
    assert violations == [
        "VIOLATION: balances of currency EUR sum to 7, not 0",
        f"VIOLATION: account {ids['payee']} has balance 1207 but its entries sum to 1200",
    ]
    assert done.stdout.splitlines()[-1] == "settle audit: 2 violation(s)"


def test_the_pending_threshold_of_the_audit_command_is_an_option(scratch: str) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        ids = small_ledger(conn)

    strict = settle("audit", "--pending-threshold", "0", env=audit_env(scratch))

    assert strict.returncode == 1, strict.stdout
    assert f"VIOLATION: transfer {ids['waiting']} has been pending for " in strict.stdout
    assert strict.stdout.count("has been pending for") == 1


def test_an_unreachable_database_makes_the_audit_fail_with_one_line() -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}

    done = settle("audit", env=env)

    assert done.returncode == 1
    assert done.stdout.startswith("settle audit: cannot read the ledger:")
    assert len(done.stdout.splitlines()) == 1


def _drop_constraint(conn: psycopg.Connection, table: str, name: str) -> None:
    query = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}")
    conn.execute(query.format(sql.Identifier(table), sql.Identifier(name)))


Corruption = Callable[[psycopg.Connection, dict[str, int]], str]


def _second_debit_and_credit(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES (%s, %s, -1200),"
        " (%s, %s, 1200)",
        (ids["paid"], ids["payer"], ids["paid"], ids["payee"]),
    )
    conn.execute("UPDATE accounts SET balance = balance - 1200 WHERE id = %s", (ids["payer"],))
    conn.execute("UPDATE accounts SET balance = balance + 1200 WHERE id = %s", (ids["payee"],))
    return f"settled transfer {ids['paid']} has 2 debit(s) and 2 credit(s) instead of one each"


def _entries_for_a_failed_transfer(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES (%s, %s, -5), (%s, %s, 5)",
        (ids["refused"], ids["payee"], ids["refused"], ids["payer"]),
    )
    conn.execute("UPDATE accounts SET balance = balance - 5 WHERE id = %s", (ids["payee"],))
    conn.execute("UPDATE accounts SET balance = balance + 5 WHERE id = %s", (ids["payer"],))
    return f"failed transfer {ids['refused']} has 2 ledger entries (it should have none)"


def _entries_for_a_pending_transfer(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES (%s, %s, -100),"
        " (%s, %s, 100)",
        (ids["waiting"], ids["payer"], ids["waiting"], ids["payee"]),
    )
    conn.execute("UPDATE accounts SET balance = balance - 100 WHERE id = %s", (ids["payer"],))
    conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id = %s", (ids["payee"],))
    return f"pending transfer {ids['waiting']} has 2 ledger entries (it should have none)"


def _entry_on_the_wrong_account(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "UPDATE entries SET account_id = %s WHERE transfer_id = %s AND amount > 0",
        (ids["treasury"], ids["paid"]),
    )
    conn.execute("UPDATE accounts SET balance = balance - 1200 WHERE id = %s", (ids["payee"],))
    conn.execute("UPDATE accounts SET balance = balance + 1200 WHERE id = %s", (ids["treasury"],))
    return f"settled transfer {ids['paid']} has entries that do not match its amount and accounts"


def _missing_credit(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute("DELETE FROM entries WHERE transfer_id = %s AND amount > 0", (ids["paid"],))
    conn.execute("UPDATE accounts SET balance = balance - 1200 WHERE id = %s", (ids["payee"],))
    return f"settled transfer {ids['paid']} has 1 debit(s) and 0 credit(s) instead of one each"


def _overdrawn_account(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    _drop_constraint(conn, "accounts", "balance_not_negative")
    conn.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES (%s, %s, -9000),"
        " (%s, %s, 9000)",
        (ids["paid"], ids["payee"], ids["paid"], ids["treasury"]),
    )
    conn.execute("UPDATE accounts SET balance = balance - 9000 WHERE id = %s", (ids["payee"],))
    conn.execute("UPDATE accounts SET balance = balance + 9000 WHERE id = %s", (ids["treasury"],))
    return f"account {ids['payee']} may not go negative but has balance -7800"


def _money_created_from_nothing(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES (%s, %s, 50)",
        (ids["paid"], ids["payer"]),
    )
    conn.execute("UPDATE accounts SET balance = balance + 50 WHERE id = %s", (ids["payer"],))
    return "balances of currency EUR sum to 50, not 0"


def _event(conn: psycopg.Connection, transfer_id: int, kind: str) -> int:
    row = conn.execute(
        "SELECT id FROM transfer_events WHERE transfer_id = %s AND type = %s",
        (transfer_id, f"transfer.{kind}"),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _settled_without_its_event(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute(
        "DELETE FROM transfer_events WHERE id = %s", (_event(conn, ids["paid"], "settled"),)
    )
    accepted = _event(conn, ids["paid"], "accepted")
    return (
        f"transfer {ids['paid']} is settled, but its latest event (transfer.accepted,"
        f" id {accepted}) left it pending"
    )


def _changed_with_the_events_trigger_off(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    # As a replica applies rows: no trigger fires, so the change gets no event.
    conn.execute("SET LOCAL session_replication_role = replica")
    conn.execute(
        "UPDATE transfers SET status = 'failed', failure_code = 'insufficient_funds',"
        " finished_at = now() WHERE id = %s",
        (ids["waiting"],),
    )
    conn.execute("SET LOCAL session_replication_role = origin")
    accepted = _event(conn, ids["waiting"], "accepted")
    return (
        f"transfer {ids['waiting']} is failed (insufficient_funds), but its latest event"
        f" (transfer.accepted, id {accepted}) left it pending"
    )


def _accepted_without_its_event(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    conn.execute("DELETE FROM transfer_events WHERE transfer_id = %s", (ids["waiting"],))
    return f"transfer {ids['waiting']} is pending and has no event at all"


def _history_without_its_acceptance(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    accepted = _event(conn, ids["refused"], "accepted")
    conn.execute("DELETE FROM transfer_events WHERE id = %s", (accepted,))
    failed = _event(conn, ids["refused"], "failed")
    return f"transfer {ids['refused']}: event {failed} (transfer.failed) cannot follow nothing"


def _event_without_its_change(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    # A second settlement of the same transfer, as an event only.
    row = conn.execute(
        "INSERT INTO transfer_events (type, transfer_id, from_account_id, to_account_id, status,"
        " attempts, settled_at) SELECT 'transfer.settled', id, from_account_id, to_account_id,"
        " status, attempts, settled_at FROM transfers WHERE id = %s RETURNING id",
        (ids["paid"],),
    ).fetchone()
    assert row is not None
    return (
        f"transfer {ids['paid']}: event {row[0]} (transfer.settled) cannot follow transfer.settled"
    )


def _event_of_no_transfer(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    row = conn.execute(
        "INSERT INTO transfer_events (type, transfer_id, from_account_id, to_account_id, status,"
        " attempts) VALUES ('transfer.accepted', 0, %s, %s, 'pending', 0) RETURNING id",
        (ids["payer"], ids["payee"]),
    ).fetchone()
    assert row is not None
    return f"event {row[0]} (transfer.accepted) does not match transfer 0: no such transfer"


def _event_of_the_wrong_type(conn: psycopg.Connection, ids: dict[str, int]) -> str:
    failed = _event(conn, ids["refused"], "failed")
    conn.execute("UPDATE transfer_events SET type = 'transfer.cancelled' WHERE id = %s", (failed,))
    return (
        f"event {failed} (transfer.cancelled) does not match transfer {ids['refused']}:"
        " its state is failed (insufficient_funds)"
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        _second_debit_and_credit,
        _entries_for_a_failed_transfer,
        _entries_for_a_pending_transfer,
        _entry_on_the_wrong_account,
        _missing_credit,
        _overdrawn_account,
        _money_created_from_nothing,
        _settled_without_its_event,
        _changed_with_the_events_trigger_off,
        _accepted_without_its_event,
        _history_without_its_acceptance,
        _event_without_its_change,
        _event_of_no_transfer,
        _event_of_the_wrong_type,
    ],
    ids=lambda f: f.__name__.strip("_").replace("_", " "),
)
def test_each_broken_ledger_rule_is_reported_on_its_own_line(
    settings: Settings, corrupt: Corruption
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        ids = small_ledger(conn)
        conn.commit()
        assert find_violations(conn) == []
        expected = corrupt(conn, ids)  # uncommitted: only this transaction sees it

        found = find_violations(conn)
        conn.rollback()

    assert expected in found, found


def test_a_transfer_pending_past_the_threshold_is_reported_with_its_dead_letter(
    settings: Settings,
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        ids = small_ledger(conn)
        conn.commit()
        stale, parked = ids["waiting"], submit(conn, ids["payer"], ids["payee"], 10)
        conn.execute(
            "UPDATE transfers SET created_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            ([stale, parked],),
        )
        assert dead_letters.mark(conn, parked, "LockNotAvailable: lock timeout")

        found = find_violations(conn, pending_older_than_seconds=600)
        report = audit(conn, pending_older_than_seconds=600)
        conn.rollback()

    assert f"transfer {stale} has been pending for 3600s" in found
    assert any(
        line.startswith(f"transfer {parked} has been pending for 3600s (dead-lettered at ")
        and line.endswith(
            f": LockNotAvailable: lock timeout; `settle dead-letters retry {parked}`"
            " sends it again)"
        )
        for line in found
    ), found
    assert report.dead_lettered >= 1
    assert report.violations == found
