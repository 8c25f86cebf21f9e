"""The lease protocol on the real Postgres: grants never add up past the budget."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from shared.db.leases import take_turn


@pytest.fixture
def lease_table(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The lease table emptied inside a transaction that is rolled back afterwards."""
    with db.transaction(force_rollback=True):
        db.execute("DELETE FROM connection_leases")
        yield db


def turn(conn: psycopg.Connection, holder: str, wanted: int, held: int, budget: int = 5):
    return take_turn(
        conn,
        holder=holder,
        role="worker",
        wanted=wanted,
        budget=budget,
        ttl_seconds=10,
        held=held,
    )


def granted_total(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(sum(granted), 0) FROM connection_leases").fetchone()
    assert row is not None
    return int(row[0])


def test_a_late_process_gets_only_what_is_free_until_the_first_one_shrinks(lease_table) -> None:
    conn = lease_table
    first = turn(conn, "a", wanted=4, held=0)
    assert first.granted == 4
    # b arrives: fair targets are a=3, b=2, but only 1 connection is free yet
    second = turn(conn, "b", wanted=4, held=0)
    assert (second.target, second.granted) == (2, 1)
    assert granted_total(conn) == 5
    # a still holds 4 connections: its grant may not drop below what it holds
    assert turn(conn, "a", wanted=4, held=4).granted == 4
    # a's pool shrank to its target: the grant follows, and b may grow into the room
    assert turn(conn, "a", wanted=4, held=3).granted == 3
    assert turn(conn, "b", wanted=4, held=1).granted == 2
    assert granted_total(conn) == 5


def test_a_process_finding_the_budget_taken_is_granted_nothing(lease_table) -> None:
    conn = lease_table
    turn(conn, "a", wanted=3, held=0, budget=2)
    turn(conn, "b", wanted=3, held=0, budget=2)
    waiting = turn(conn, "c", wanted=3, held=0, budget=2)
    assert waiting.granted == 0
    assert granted_total(conn) == 2


def test_an_expired_lease_is_removed_and_its_share_returns(lease_table) -> None:
    conn = lease_table
    turn(conn, "a", wanted=4, held=0)
    turn(conn, "b", wanted=4, held=0)
    conn.execute(
        "UPDATE connection_leases SET heartbeat_at = now() - interval '1 minute' WHERE holder = 'a'"
    )
    after = turn(conn, "b", wanted=4, held=1)
    assert after.holders == 1
    assert after.granted == 4


def test_a_lease_that_expired_under_a_live_process_comes_back_with_only_what_is_free(
    lease_table,
) -> None:
    conn = lease_table
    turn(conn, "a", wanted=5, held=0, budget=10)
    turn(conn, "b", wanted=5, held=0, budget=10)
    # b's heartbeats stall past the TTL: a newcomer takes its share meanwhile.
    conn.execute(
        "UPDATE connection_leases SET heartbeat_at = now() - interval '1 minute' WHERE holder = 'b'"
    )
    assert turn(conn, "c", wanted=5, held=0, budget=10).granted == 5
    # b is heard again, still holding its 5 connections: it may count none of them.
    back = turn(conn, "b", wanted=5, held=5, budget=10)
    assert back.granted == 0
    assert granted_total(conn) == 10


def test_the_smallest_budget_among_live_leases_is_the_one_kept(lease_table) -> None:
    conn = lease_table
    assert turn(conn, "old", wanted=6, held=0, budget=10).granted == 6
    # A process configured with a smaller budget (a rolling deploy) joins: 4 in all.
    newer = turn(conn, "new", wanted=6, held=0, budget=4)
    assert newer.granted == 0
    assert turn(conn, "old", wanted=6, held=6, budget=10).target <= 4
