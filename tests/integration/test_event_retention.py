"""Retention of transfer events, on a database of its own: the sweeper deletes the events
older than EVENT_RETENTION_DAYS oldest first, a small batch per transaction, never one
younger and never past the horizon; an `after` whose successors were deleted answers 410;
the audit still holds, and still notices a missing event of a transfer changed since."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from falcon.testing import TestClient

from shared.config import Settings
from shared.events import retention
from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.runtime.signals import StopRequest
from shared.testing.scratch import scratch_database
from tests.contract import held_to_document
from tests.helpers import fund, make_account, opened_pool, submit
from web.app import create_app
from worker.sweeper import expire_events


@pytest.fixture
def old_db(settings: Settings) -> Iterator[str]:
    """A database of the test's own; its audit must hold at the end."""
    with scratch_database(settings.database_url, prefix="settle_retention") as url:
        yield url
        with psycopg.connect(url, autocommit=True) as conn:
            assert find_violations(conn) == [], "retention broke the events' audit"


@pytest.fixture
def conn(old_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(old_db, autocommit=True) as c:
        yield c


def age(conn: psycopg.Connection, transfer_ids: list[int], days: int) -> None:
    """Make the transfers, and their events, `days` days old."""
    conn.execute(
        "UPDATE transfers SET created_at = created_at - make_interval(days => %s),"
        " finished_at = finished_at - make_interval(days => %s),"
        " settled_at = settled_at - make_interval(days => %s) WHERE id = ANY(%s)",
        (days, days, days, transfer_ids),
    )
    conn.execute(
        "UPDATE transfer_events SET created_at = created_at - make_interval(days => %s),"
        " settled_at = settled_at - make_interval(days => %s) WHERE transfer_id = ANY(%s)",
        (days, days, transfer_ids),
    )


def event_ids(conn: psycopg.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT id FROM transfer_events ORDER BY id")]


def mark(conn: psycopg.Connection) -> tuple[int, object]:
    row = conn.execute(
        "SELECT deleted_through, deleted_until FROM transfer_event_retention"
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def test_events_past_retention_are_deleted_oldest_first_in_batches_and_younger_kept(
    conn: psycopg.Connection,
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    old = [fund(conn, treasury, payee, 1) for _ in range(3)]  # 2 events each
    pending_old = submit(conn, treasury, payee, 1)  # 1 event
    age(conn, [*old, pending_old], 31)
    young = fund(conn, treasury, payee, 1)
    aged = event_ids(conn)[:7]
    kept = event_ids(conn)[7:]

    batches = list(retention.expire(conn, days=30, batch=3))

    assert batches == [3, 3, 1]
    assert event_ids(conn) == kept
    assert mark(conn)[0] == aged[-1]
    # Those transfers keep their state; the young one keeps its whole history.
    assert ledger.get_transfer(conn, old[0], by=auth.SYSTEM)["status"] == "settled"
    types = conn.execute(
        "SELECT type FROM transfer_events WHERE transfer_id = %s ORDER BY id", (young,)
    ).fetchall()
    assert [t for (t,) in types] == ["transfer.accepted", "transfer.settled"]
    assert list(retention.expire(conn, days=30, batch=3)) == []  # nothing more is due
    ledger.settle_transfer(conn, pending_old)  # its history lost its start; still sound


def test_deletion_stops_at_the_first_event_young_enough_to_keep(conn: psycopg.Connection) -> None:
    """Only a prefix of the sequence is ever deleted: an old event after a young one waits
    (so every id up to the mark is gone and none after it)."""
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    first, middle, last = (fund(conn, treasury, payee, 1) for _ in range(3))
    age(conn, [first, last], 40)
    before = event_ids(conn)

    assert list(retention.expire(conn, days=30)) == [2]

    assert event_ids(conn) == before[2:]
    assert mark(conn)[0] == before[1]
    assert middle


def test_a_sweeper_pass_deletes_the_events_past_event_retention_days(
    settings: Settings, old_db: str, conn: psycopg.Connection
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    transfers = [fund(conn, treasury, payee, 1) for _ in range(4)]
    age(conn, transfers, 8)
    sweeper_settings = settings.with_(database_url=old_db, event_retention_days=7)
    young = fund(conn, treasury, payee, 1)
    with opened_pool(sweeper_settings, "sweeper", size=1) as pool:
        assert expire_events(pool, sweeper_settings, StopRequest()) == 8
        assert expire_events(pool, sweeper_settings, StopRequest()) == 0
    assert {row[0] for row in conn.execute("SELECT transfer_id FROM transfer_events")} == {young}


@pytest.fixture
def api(settings: Settings, old_db: str) -> Iterator[TestClient]:
    with psycopg.connect(old_db, autocommit=True) as conn:
        key = auth.create_key(conn, user_id=None).key
    with opened_pool(settings.with_(database_url=old_db), "web-old", size=1) as pool:
        app = create_app(
            settings.with_(database_url=old_db, event_retention_days=30),
            pool=pool,
            enqueue=lambda transfer_id: None,
            ping_broker=lambda: True,
        )
        with held_to_document(app) as recorder:
            yield TestClient(recorder, headers={"Authorization": f"Bearer {key}"})


def test_a_cursor_older_than_retention_is_gone_with_410_and_says_where_to_go_on(
    conn: psycopg.Connection, api: TestClient
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    old = [fund(conn, treasury, payee, 1) for _ in range(2)]
    age(conn, old, 31)
    young = fund(conn, treasury, payee, 1)
    assert list(retention.expire(conn, days=30)) == [4]
    gone = mark(conn)[0]

    resp = api.simulate_get("/events", query_string=f"after={gone - 1}")
    assert resp.status_code == 410
    assert resp.json["error"]["code"] == "cursor_expired"
    message = resp.json["error"]["message"]
    assert f"events after {gone - 1} are no longer kept" in message
    assert "kept for 30 days" in message and f"after={gone}" in message

    for query in (f"after={gone}", ""):  # from the mark, or from the oldest kept
        resp = api.simulate_get("/events", query_string=query)
        assert resp.status_code == 200
        assert [e["data"]["id"] for e in resp.json["data"]] == [young, young]


def test_the_audit_excuses_histories_retention_shortened_and_not_a_missing_event(
    conn: psycopg.Connection,
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    settled_long_ago = fund(conn, treasury, payee, 1)
    accepted_long_ago = submit(conn, treasury, payee, 1)
    age(conn, [settled_long_ago, accepted_long_ago], 31)
    assert list(retention.expire(conn, days=30)) == [3]
    assert find_violations(conn) == []  # one without events, one without its first

    ledger.settle_transfer(conn, accepted_long_ago)  # settled now: its event is kept
    assert find_violations(conn) == []
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM transfer_events WHERE transfer_id = %s", (accepted_long_ago,))
        found = find_violations(conn)
    assert found == [f"transfer {accepted_long_ago} is settled and has no event at all"]
