"""`settle status` on a database and a broker namespace of its own: exit 0 when all is well,
1 when something needs attention."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from shared.ledger import dead_letters
from shared.ledger import operations as ledger
from shared.testing.scratch import scratch_database
from tests.helpers import make_account, submit
from tests.scratch import settle


@pytest.fixture
def status_env() -> Iterator[dict[str, str]]:
    server = os.environ["DATABASE_URL"]
    with scratch_database(server, prefix="settle_status") as url:
        yield {
            **os.environ,
            "DATABASE_URL": url,
            "BROKER_NAMESPACE": f"settle-test-status-{uuid.uuid4().hex[:8]}",
        }


def test_status_exits_0_and_shows_the_overview_when_all_is_well(
    status_env: dict[str, str],
) -> None:
    with psycopg.connect(status_env["DATABASE_URL"], autocommit=True) as conn:
        submit(conn, make_account(conn, treasury=True), make_account(conn), 100)
    done = settle("status", env=status_env)
    assert done.returncode == 0, done.stdout
    assert "queue transfers (messages): 0 ready, 0 in flight, 0 delayed, 0 dead" in done.stdout
    assert "dead letters: 0 transfer(s); 0 message(s) in the dead-letter queue" in done.stdout
    assert "transfers: 1 pending (0 dead-lettered), 0 settled, 0 failed" in done.stdout
    assert "processes alive (live leases): 0 web, 0 worker, 0 webhooks, 0 sweeper" in done.stdout
    assert "ATTENTION" not in done.stdout
    assert done.stdout.rstrip().endswith("settle status: ok")


def test_status_exits_1_and_says_why_with_a_dead_letter(status_env: dict[str, str]) -> None:
    with psycopg.connect(status_env["DATABASE_URL"], autocommit=True) as conn:
        transfer = submit(conn, make_account(conn, treasury=True), make_account(conn), 100)
        assert dead_letters.mark(conn, transfer, "OperationalError: gone")
    done = settle("status", env=status_env)
    assert done.returncode == 1, done.stdout
    assert "ATTENTION: 1 dead-lettered transfer(s)" in done.stdout
    assert "settle status: 1 thing(s) need attention" in done.stdout


def test_status_exits_1_when_a_transfer_is_pending_beyond_the_threshold(
    status_env: dict[str, str],
) -> None:
    with psycopg.connect(status_env["DATABASE_URL"], autocommit=True) as conn:
        transfer = submit(conn, make_account(conn, treasury=True), make_account(conn), 100)
        conn.execute(
            "UPDATE transfers SET created_at = now() - interval '10 minutes' WHERE id = %s",
            (transfer,),
        )
    assert settle("status", env=status_env).returncode == 1
    relaxed = settle("status", "--pending-threshold", "3600", env=status_env)
    assert relaxed.returncode == 0, relaxed.stdout


def test_status_flags_transfers_being_retried_as_soon_as_one_is(
    status_env: dict[str, str],
) -> None:
    with psycopg.connect(status_env["DATABASE_URL"], autocommit=True) as conn:
        treasury, payee = make_account(conn, treasury=True), make_account(conn)
        retried, waiting = submit(conn, treasury, payee, 100), submit(conn, treasury, payee, 200)
        conn.execute(
            "UPDATE transfers SET created_at = now() - interval '42 seconds' WHERE id = %s",
            (retried,),
        )
        # Its first attempt failed: it waits for a retry, well within the pending threshold.
        ledger.record_failed_attempt(conn, [retried], "LockNotAvailable: lock timeout")

    done = settle("status", env=status_env)

    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    retrying = next(line for line in lines if line.startswith("being retried: "))
    assert re.fullmatch(r"being retried: 1 transfer\(s\), the oldest accepted 4\ds ago", retrying)
    assert any(
        re.fullmatch(r"ATTENTION: 1 transfer\(s\) being retried, the oldest accepted 4\ds ago.*", x)
        for x in lines
    ), done.stdout
    assert waiting  # pending without a failed attempt: not flagged


def test_status_exits_1_when_a_role_holds_more_than_its_plan(status_env: dict[str, str]) -> None:
    """Three sweeper connections against a plan of two."""
    url = status_env["DATABASE_URL"]
    with (
        psycopg.connect(url, application_name="settle:sweeper:elsewhere:1"),
        psycopg.connect(url, application_name="settle:sweeper:elsewhere:2"),
        psycopg.connect(url, application_name="settle:sweeper:elsewhere:3"),
    ):
        done = settle("status", env=status_env)
    assert done.returncode == 1, done.stdout
    assert "ATTENTION: sweeper holds 3 connection(s), more than its plan of 2" in done.stdout


def test_status_exits_1_with_one_line_when_postgres_is_unreachable(
    status_env: dict[str, str],
) -> None:
    env = {**status_env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    done = settle("status", env=env)
    assert done.returncode == 1
    assert done.stdout.strip().startswith("settle status: cannot read Postgres")
