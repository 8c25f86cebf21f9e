"""The plans of GET /transfers on a large ledger: every shape of the listing is an index scan
in the listing's own order that reads about one page of rows, however deep its cursor and
however rare its status, never a sequential scan or a sort of everything that matches.

The statements are the ones the listing runs (`listing.transfers_sql`), EXPLAINed with
ANALYZE on a database of the module's own holding 100,000 transfers (`shared.testing.bulk`)
that the planner has ANALYZEd: enough for a sequential scan and sort to look cheap to it where an
index does not serve (it picks one at this size when an index is dropped; see the last
test). The benchmark (`make bench`) times the same lists at 1,000,000.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.ledger import listing
from shared.ledger.paging import encode_cursor, microseconds
from shared.testing.bulk import Bulk, load
from shared.testing.scratch import scratch_database

TRANSFERS = 100_000
LIMIT = 100


@pytest.fixture(scope="module")
def big(settings: Settings) -> Iterator[tuple[psycopg.Connection, Bulk]]:
    with (
        scratch_database(settings.database_url, prefix="settle_plans") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        yield conn, load(conn, TRANSFERS)


@dataclass(frozen=True)
class Plan:
    """What EXPLAIN (ANALYZE) said: every node, the indexes used, the rows scans read."""

    nodes: list[dict[str, Any]]

    @property
    def indexes(self) -> set[str]:
        return {n["Index Name"] for n in self.nodes if "Index Name" in n}

    @property
    def types(self) -> set[str]:
        return {n["Node Type"] for n in self.nodes}

    @property
    def rows_read(self) -> int:
        """Rows the scans produced or threw away (their filters), over all their loops."""
        total = 0
        for n in self.nodes:
            if "Scan" in n["Node Type"] and "Bitmap Index" not in n["Node Type"]:
                kept = n["Actual Rows"] + n.get("Rows Removed by Filter", 0)
                total += (kept + n.get("Rows Removed by Index Recheck", 0)) * n["Actual Loops"]
        return total

    def __str__(self) -> str:
        return "\n".join(
            f"{n['Node Type']} {n.get('Index Name', '')} rows={n.get('Actual Rows')}"
            f" loops={n.get('Actual Loops')} removed={n.get('Rows Removed by Filter', 0)}"
            for n in self.nodes
        )


def explain(conn: psycopg.Connection, params: dict[str, str], accounts: list[int] | None) -> Plan:
    """The plan of the listing for `params`, as an operator (`accounts` None) or as a user
    owning `accounts` would run it (`listing._scope`'s choices, without the lookup)."""
    query = listing.transfer_query(params)
    counterparty = None
    if query.account_id is not None:
        if accounts is None or query.account_id in accounts:
            accounts = [query.account_id]
        else:
            counterparty = query.account_id
    statement, args = listing.transfers_sql(query, accounts, counterparty)
    row = conn.execute(
        b"EXPLAIN (ANALYZE, FORMAT JSON) " + statement.as_bytes(conn), args
    ).fetchone()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    found: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        found.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(document[0]["Plan"])
    return Plan(found)


def middle_cursor(conn: psycopg.Connection, bulk: Bulk) -> str:
    """The cursor of the transfer halfway through the ledger: a page deep in the list."""
    middle = (bulk.first_id + bulk.last_id) // 2
    row = conn.execute("SELECT created_at, id FROM transfers WHERE id = %s", (middle,)).fetchone()
    assert row is not None
    return encode_cursor(listing.TRANSFER_CURSOR, microseconds(row[0]), row[1])


def check(plan: Plan, *, uses: set[str], at_most: int) -> None:
    """No sequential scan, one of the indexes `uses` (when given), at most `at_most` rows."""
    assert "Seq Scan" not in plan.types, f"a sequential scan:\n{plan}"
    assert not uses or uses & plan.indexes, f"expected one of {uses}:\n{plan}"
    assert plan.rows_read <= at_most, f"read {plan.rows_read} rows for a page:\n{plan}"


# (name, query parameters, whose accounts (None: an operator), indexes, rows read at most)
OPERATOR = [
    ("every transfer", {}, {"transfers_created"}, LIMIT + 1),
    ("rare status", {"status": "pending"}, {"transfers_status_created"}, LIMIT + 1),
    # Nearly every transfer is settled: reading newest first and skipping the others costs
    # as little as the status index, and the planner may take either.
    (
        "common status",
        {"status": "settled"},
        {"transfers_status_created", "transfers_created"},
        2 * (LIMIT + 1),
    ),
    (
        "failure code",
        {"failure_code": "insufficient_funds"},
        {"transfers_failure_created"},
        LIMIT + 1,
    ),
    (
        "rare status in a time window",
        {"status": "failed", "created_after": "2024-01-01T04:00:00Z"}
        | {"created_before": "2024-01-01T05:00:00Z"},
        {"transfers_status_created"},
        LIMIT + 1,
    ),
    (
        "created before",
        {"created_before": "2024-01-01T00:20:00Z"},
        {"transfers_created"},
        LIMIT + 1,
    ),
    ("one order's metadata", {"metadata[order_id]": "o-50000"}, {"transfers_metadata"}, 2),
]


@pytest.mark.parametrize(
    ("params", "uses", "at_most"), [case[1:] for case in OPERATOR], ids=[c[0] for c in OPERATOR]
)
@pytest.mark.parametrize("deep", [False, True], ids=["first page", "page from the middle"])
def test_an_operators_list_reads_one_page_through_the_index_of_its_filter(
    big: tuple[psycopg.Connection, Bulk],
    params: dict[str, str],
    uses: set[str],
    at_most: int,
    deep: bool,
) -> None:
    conn, bulk = big
    asked = {**params, "limit": str(LIMIT)}
    if deep:
        asked["cursor"] = middle_cursor(conn, bulk)
    check(explain(conn, asked, None), uses=uses, at_most=at_most)


ACCOUNT_INDEXES = {"transfers_from_status_created", "transfers_to_status_created"}
#: An account's list merges six index ranges (out of and into it, in each status), each
#: cut at a page: the most it may read for one page.
SIX_RANGES = 6 * (LIMIT + 1)


@pytest.mark.parametrize(
    "params",
    [{}, {"status": "pending"}, {"status": "failed"}, {"created_before": "2024-01-01T05:00:00Z"}],
    ids=["every status", "rare status", "failed", "created before"],
)
@pytest.mark.parametrize("deep", [False, True], ids=["first page", "page from the middle"])
def test_one_busy_accounts_list_reads_about_a_page_per_status_and_direction(
    big: tuple[psycopg.Connection, Bulk], params: dict[str, str], deep: bool
) -> None:
    """The merchant receives one transfer in twenty: 5,000 here, 50,000 at a million."""
    conn, bulk = big
    asked = {**params, "limit": str(LIMIT), "account_id": str(bulk.merchant)}
    if deep:
        asked["cursor"] = middle_cursor(conn, bulk)
    plan = explain(conn, asked, None)
    check(plan, uses=ACCOUNT_INDEXES, at_most=SIX_RANGES)


def test_a_users_list_over_several_accounts_reads_about_a_page_per_account_range(
    big: tuple[psycopg.Connection, Bulk],
) -> None:
    conn, bulk = big
    own = bulk.accounts[:3]
    for params in ({}, {"status": "failed"}, {"cursor": middle_cursor(conn, bulk)}):
        plan = explain(conn, {**params, "limit": str(LIMIT)}, own)
        check(plan, uses=ACCOUNT_INDEXES, at_most=len(own) * SIX_RANGES)


def test_a_users_list_narrowed_to_a_counterparty_is_still_index_scans(
    big: tuple[psycopg.Connection, Bulk],
) -> None:
    conn, bulk = big
    own = bulk.accounts[5:7]
    plan = explain(conn, {"account_id": str(bulk.merchant), "limit": str(LIMIT)}, own)
    assert "Seq Scan" not in plan.types, str(plan)
    assert plan.indexes & ACCOUNT_INDEXES, str(plan)


def test_without_its_index_the_planner_would_scan_the_table_so_the_checks_mean_something(
    big: tuple[psycopg.Connection, Bulk],
) -> None:
    """The size is enough for the planner's choice to matter: take the status index away
    (in a transaction rolled back) and a rare status is found by reading far more than a
    page."""
    conn, _ = big
    with (
        pytest.raises(AssertionError, match="rows for a page|sequential scan"),
        conn.transaction(force_rollback=True),
    ):
        conn.execute("DROP INDEX transfers_status_created")
        plan = explain(conn, {"status": "pending", "limit": str(LIMIT)}, None)
        check(plan, uses=set(), at_most=LIMIT + 1)
