"""`settle webhooks list|deliveries|attempts|retry`, run as the real command against a database
of its own: failing endpoints first, an endpoint's deliveries and a delivery's attempts, and
retries recorded as the command line's actions; bad input exits with one line and changes
nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.config import Settings
from shared.testing.scratch import scratch_database
from tests.dashboard import webhook_delivery, webhook_endpoint

SETTLE = Path(sys.executable).with_name("settle")
ERROR_500 = "HTTP 500 from the receiver"


@pytest.fixture(scope="module")
def hooks_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_cli_hooks") as url:
        yield url


@pytest.fixture
def conn(hooks_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hooks_db, autocommit=True) as c:
        yield c


@pytest.fixture
def settle(hooks_db: str):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        """`settle ARGS` with the suite's environment, on this module's database."""
        env = {**os.environ, "DATABASE_URL": hooks_db}
        env.pop("DATABASE_DIRECT_URL", None)
        return subprocess.run(
            [str(SETTLE), *args], env=env, capture_output=True, text=True, timeout=60
        )

    return run


def status_of(conn: psycopg.Connection, delivery: int) -> str:
    row = conn.execute(
        "SELECT status || CASE WHEN status = 'pending' AND next_attempt_at <= now()"
        " AND enqueued_at IS NULL AND retry_until > now() THEN ' due' ELSE '' END"
        " FROM webhook_deliveries WHERE id = %s",
        (delivery,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def recorded(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT key_id, action, webhook_endpoint_id, webhook_delivery_ids FROM operator_actions"
        " ORDER BY id"
    ).fetchall()


def test_list_shows_failing_endpoints_first_with_their_counts_and_last_error(
    settle, conn: psycopg.Connection
) -> None:
    healthy = webhook_endpoint(conn, "http://127.0.0.1:9/cli-healthy")
    webhook_delivery(conn, healthy, "delivered", [(200, None)])
    failing = webhook_endpoint(conn, "http://127.0.0.1:9/cli-failing")
    webhook_delivery(conn, failing, "failed", [(500, ERROR_500)])
    webhook_delivery(conn, failing, "pending", [(500, ERROR_500)])

    done = settle("webhooks", "list", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:6] == ["id", "url", "owner", "failed", "retrying", "pending"]
    failing_line = next(line for line in lines if "/cli-failing" in line)
    assert lines.index(failing_line) < lines.index(
        next(line for line in lines if "/cli-healthy" in line)
    )
    assert failing_line.split()[4:7] == ["1", "1", "1"]  # after "user N"
    assert "HTTP 500 " + ERROR_500 in failing_line
    assert "live endpoint(s) shown" in lines[-1]


def test_deliveries_and_attempts_show_what_each_attempt_got(
    settle, conn: psycopg.Connection
) -> None:
    endpoint = webhook_endpoint(conn)
    failed = webhook_delivery(conn, endpoint, "failed", [(None, "connection refused"), (500, "x")])
    delivered = webhook_delivery(conn, endpoint, "delivered", [(200, None)])

    every = settle("webhooks", "deliveries", str(endpoint))
    assert every.returncode == 0, every.stderr
    ids = [line.split()[0] for line in every.stdout.splitlines()[1:-1]]
    assert ids == [str(delivered), str(failed)]  # newest first
    only_failed = settle("webhooks", "deliveries", str(endpoint), "--status", "failed")
    assert [line.split()[0] for line in only_failed.stdout.splitlines()[1:-1]] == [str(failed)]

    attempts = settle("webhooks", "attempts", str(failed))
    assert attempts.returncode == 0, attempts.stderr
    lines = attempts.stdout.splitlines()
    assert f"delivery {failed}:" in lines[0] and "failed, 2 attempt(s)" in lines[0]
    assert "connection refused" in lines[2] and " 500 " in lines[3]


def test_retry_by_delivery_sets_failed_ones_pending_and_records_the_command_line(
    settle, conn: psycopg.Connection
) -> None:
    endpoint = webhook_endpoint(conn)
    first, second = (webhook_delivery(conn, endpoint, "failed", [(500, "x")]) for _ in range(2))
    delivered = webhook_delivery(conn, endpoint, "delivered", [(200, None)])
    before = recorded(conn)

    done = settle(
        "webhooks", "retry", "--delivery", str(first), "--delivery", str(second),
        "--delivery", str(delivered),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "retried 2 of 3 delivery(ies)" in done.stdout
    assert f"left as they are: {delivered}" in done.stdout
    assert [status_of(conn, d) for d in (first, second, delivered)] == [
        "pending due",
        "pending due",
        "delivered",
    ]
    assert recorded(conn)[len(before) :] == [(None, "retry_webhook", endpoint, [first, second])]
    log = settle("audit-log")
    assert f"the command line  retry_webhook 2 delivery(ies) of webhook endpoint {endpoint}" in (
        log.stdout
    )


def test_retry_all_failed_of_an_endpoint(settle, conn: psycopg.Connection) -> None:
    endpoint, other = webhook_endpoint(conn), webhook_endpoint(conn)
    failed = [webhook_delivery(conn, endpoint, "failed", [(500, "x")]) for _ in range(3)]
    pending = webhook_delivery(conn, endpoint, "pending", [(500, "x")])
    elsewhere = webhook_delivery(conn, other, "failed", [(500, "x")])

    done = settle("webhooks", "retry", "--endpoint", str(endpoint), "--all-failed")
    assert done.returncode == 0, done.stderr
    assert f"retried 3 failed delivery(ies) of endpoint {endpoint}" in done.stdout
    assert {status_of(conn, d) for d in failed} == {"pending due"}
    assert status_of(conn, pending) == "pending"  # its own backoff runs, as it was
    assert status_of(conn, elsewhere) == "failed"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["retry"], 2, "retry needs --delivery ID"),
        (["retry", "--endpoint", "{e}"], 2, "retry needs --delivery ID"),
        (["retry", "--all-failed"], 2, "retry needs --delivery ID"),
        (["retry", "--delivery", "{d}", "--endpoint", "{e}", "--all-failed"], 2, "not both"),
        (["retry", "--delivery", "abc"], 2, "is not an id"),
        (["retry", "--delivery", "0"], 2, "is not an id"),
        (["retry", "--delivery", "{d}", "--delivery", "999999999"], 1, "999999999 does not"),
        (["retry", "--endpoint", "999999999", "--all-failed"], 1, "does not exist"),
        (["deliveries", "{e}", "--status", "broken"], 2, "invalid choice"),
        (["deliveries", "999999999"], 1, "does not exist"),
        (["attempts", "999999999"], 1, "does not exist"),
        (["list", "--limit", "0"], 2, "from 1 to 1000"),
    ],
)
def test_bad_input_exits_with_one_clear_line_and_changes_nothing(
    settle, conn: psycopg.Connection, args: list[str], code: int, says: str
) -> None:
    endpoint = webhook_endpoint(conn)
    delivery = webhook_delivery(conn, endpoint, "failed", [(500, "x")])
    before = recorded(conn)
    done = settle(
        "webhooks", *(a.replace("{e}", str(endpoint)).replace("{d}", str(delivery)) for a in args)
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    assert says in done.stderr
    if code == 1:
        assert len(done.stderr.strip().splitlines()) == 1
    if args[0] == "retry" and code == 1:
        assert "nothing was changed" in done.stderr
    assert status_of(conn, delivery) == "failed"
    assert recorded(conn) == before
