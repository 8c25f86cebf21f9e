"""Admission control on settlement's backlog: POST /transfers (and /transfers/batch) answer
503 `overloaded` with Retry-After, recording nothing, once the transfer waiting longest to
settle was accepted longer ago than the bound, and not before. No worker consumes here, so
what the app accepts stays pending: the backlog's age is the real state of a database of
this module's own, aged by moving the accepted transfers' acceptance back in time."""

from __future__ import annotations

from collections.abc import Iterator

import falcon.testing
import psycopg
import pytest

from shared.config import Settings
from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.ledger.backlog import BacklogGate
from shared.testing.scratch import scratch_database
from tests.contract import held_to_document
from tests.helpers import fund, make_account, new_key, opened_pool
from web.app import create_app

#: The bound of the module's gate, in seconds.
BOUND = 60


@pytest.fixture(scope="module")
def admission_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_admission") as url:
        yield url
        with psycopg.connect(url, autocommit=True) as conn:
            assert find_violations(conn) == [], "the admission tests broke the ledger"


@pytest.fixture
def conn(admission_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(admission_db, autocommit=True) as conn:
        yield conn
        # Each test starts with no backlog: what it left pending is settled.
        pending = conn.execute("SELECT id FROM transfers WHERE status = 'pending'").fetchall()
        ledger.settle_transfers(conn, [row[0] for row in pending])


@pytest.fixture
def sent() -> list[int]:
    return []


@pytest.fixture
def client(
    settings: Settings, admission_db: str, conn: psycopg.Connection, sent: list[int]
) -> Iterator[falcon.testing.TestClient]:
    """The app on the module's database with a gate of `BOUND` seconds that reads the
    backlog on every request; `enqueue` records the ids it is handed (no worker consumes)."""
    on_db = settings.with_(database_url=admission_db)
    key = auth.create_key(conn, user_id=None, label="admission").key
    with opened_pool(on_db, "web-admission", size=2) as pool:
        app = create_app(
            on_db,
            pool=pool,
            enqueue=sent.append,
            ping_broker=lambda: True,
            backlog=BacklogGate(BOUND, interval=0),
        )
        with held_to_document(app) as recorder:
            yield falcon.testing.TestClient(recorder, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def accounts(conn: psycopg.Connection) -> tuple[int, int]:
    treasury = make_account(conn, treasury=True)
    source, target = make_account(conn), make_account(conn)
    fund(conn, treasury, source, 1_000_000)
    return source, target


def post(
    client: falcon.testing.TestClient, accounts: tuple[int, int], key: str | None = None
) -> falcon.testing.Result:
    return client.simulate_post(
        "/transfers",
        json={"from_account_id": accounts[0], "to_account_id": accounts[1], "amount": 100},
        headers={"Idempotency-Key": key or new_key()},
    )


def accepted_ago(conn: psycopg.Connection, transfer_id: int, seconds: float) -> None:
    """Move `transfer_id`'s acceptance (and its last send) `seconds` into the past."""
    conn.execute(
        "UPDATE transfers SET created_at = now() - make_interval(secs => %s),"
        " enqueued_at = now() - make_interval(secs => %s) WHERE id = %s",
        (seconds, seconds, transfer_id),
    )


def transfer_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM transfers").fetchone()
    assert row is not None
    return int(row[0])


def test_new_transfers_are_refused_once_the_backlog_is_older_than_the_bound_and_not_before(
    client: falcon.testing.TestClient, conn: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    first = post(client, accounts)
    assert first.status_code == 202
    waiting = int(first.json["data"]["id"])

    accepted_ago(conn, waiting, BOUND - 10)  # behind, but within the bound
    assert post(client, accounts).status_code == 202

    accepted_ago(conn, waiting, BOUND + 10)
    before = transfer_count(conn)
    key = new_key()
    refused = post(client, accounts, key)
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert transfer_count(conn) == before  # nothing recorded

    # Once the backlog is settled, the same request is accepted.
    ledger.settle_transfers(conn, [waiting])
    again = post(client, accounts, key)
    assert again.status_code == 202


def test_a_batch_is_refused_whole_while_settlement_is_behind(
    client: falcon.testing.TestClient, conn: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    waiting = int(post(client, accounts).json["data"]["id"])
    accepted_ago(conn, waiting, BOUND + 10)
    before = transfer_count(conn)
    item = {"from_account_id": accounts[0], "to_account_id": accounts[1], "amount": 5}

    refused = client.simulate_post(
        "/transfers/batch",
        json={"transfers": [{**item, "idempotency_key": new_key()} for _ in range(3)]},
    )

    assert (refused.status_code, refused.json["error"]["code"]) == (503, "overloaded")
    assert transfer_count(conn) == before


def test_dead_lettered_transfers_and_retries_waiting_out_their_backoff_do_not_count(
    client: falcon.testing.TestClient, conn: psycopg.Connection, accounts: tuple[int, int]
) -> None:
    parked = int(post(client, accounts).json["data"]["id"])
    backing_off = int(post(client, accounts).json["data"]["id"])
    for tid in (parked, backing_off):
        accepted_ago(conn, tid, BOUND + 10)
    conn.execute("UPDATE transfers SET dead_lettered_at = now() WHERE id = %s", (parked,))
    conn.execute(
        "UPDATE transfers SET failed_attempts = 1, next_attempt_at = now() + interval '1 hour'"
        " WHERE id = %s",
        (backing_off,),
    )

    assert post(client, accounts).status_code == 202

    conn.execute(
        "UPDATE transfers SET dead_lettered_at = NULL, failed_attempts = 0,"
        " next_attempt_at = NULL WHERE id = ANY(%s)",
        ([parked, backing_off],),
    )


def test_a_refused_request_sends_the_transfer_sent_longest_ago_again(
    client: falcon.testing.TestClient,
    conn: psycopg.Connection,
    accounts: tuple[int, int],
    sent: list[int],
) -> None:
    # Accepted while the broker was down, say: pending, and no message carries it.
    lost = int(post(client, accounts).json["data"]["id"])
    accepted_ago(conn, lost, BOUND + 10)
    sent.clear()

    assert post(client, accounts).status_code == 503

    # Sent again at once, rather than after the sweeper's grace period: any worker's next
    # batch takes it, and the rest of the backlog with it.
    assert sent == [lost]
    row = conn.execute(
        "SELECT enqueued_at > now() - interval '1 minute' FROM transfers WHERE id = %s", (lost,)
    ).fetchone()
    assert row == (True,)  # claimed as sent now: the next refusal sends the next one
    sent.clear()
    assert post(client, accounts).status_code == 503
    assert sent == []
