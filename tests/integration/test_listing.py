"""GET /transfers, GET /accounts and GET /users/me through the real app on a database of
their own (so that "every transfer" is a set the tests know): whose rows each key sees,
newest first, cursor paging, every filter, and every malformed parameter refused.

Every answer is held to the OpenAPI document (tests/contract.py), and the module's ledger
must balance at the end.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import falcon.testing
import psycopg
import pytest
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import auth, listing
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewTransfer
from shared.ledger.paging import encode_cursor
from shared.testing.scratch import scratch_database
from tests.contract import Recorder, held_to_document
from tests.helpers import make_account, make_user, opened_pool, row_counts
from web.app import create_app

UTC = datetime.UTC


@pytest.fixture(scope="module")
def listing_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_listing") as url:
        yield url
        with psycopg.connect(url, autocommit=True) as conn:
            assert find_violations(conn) == [], "the listing tests broke the ledger"


@pytest.fixture(scope="module")
def listing_pool(settings: Settings, listing_db: str) -> Iterator[ConnectionPool]:
    with opened_pool(settings.with_(database_url=listing_db), "web-listing", size=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def recorder(
    settings: Settings, listing_db: str, listing_pool: ConnectionPool
) -> Iterator[Recorder]:
    """The app on the module's database; it hands no transfer to a broker (they stay
    pending), and every answer it gives is held to the document."""
    app = create_app(
        settings.with_(database_url=listing_db),
        pool=listing_pool,
        enqueue=lambda transfer_id: None,
        ping_broker=lambda: True,
    )
    with held_to_document(app) as found:
        yield found


@pytest.fixture
def conn(listing_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(listing_db, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def operator_key(listing_db: str) -> str:
    with psycopg.connect(listing_db, autocommit=True) as c:
        return auth.create_key(c, user_id=None, label="listing").key


class Api:
    """Requests with one API key to the module's app."""

    def __init__(self, recorder: Recorder, key: str) -> None:
        self.client = TestClient(recorder, headers={"Authorization": f"Bearer {key}"})

    def get(self, path: str, query: str = "") -> falcon.testing.Result:
        return self.client.simulate_get(path, query_string=query)

    def ids(self, path: str, query: str = "") -> list[int]:
        """The ids of every page of the list at `path` with `query`, following next_cursor
        (a page of one at a time unless `query` sets limit)."""
        found: list[int] = []
        base = query if "limit=" in query else "&".join(filter(None, [query, "limit=1"]))
        params = base
        for _ in range(1000):
            resp = self.get(path, params)
            assert resp.status_code == 200, resp.text
            found.extend(item["id"] for item in resp.json["data"])
            cursor = resp.json["next_cursor"]
            if cursor is None:
                return found
            params = f"{base}&cursor={cursor}"
        raise AssertionError("next_cursor never became null")


@pytest.fixture
def operator(recorder: Recorder, operator_key: str) -> Api:
    return Api(recorder, operator_key)


def as_user(recorder: Recorder, conn: psycopg.Connection, user: int) -> Api:
    return Api(recorder, auth.create_key(conn, user_id=user).key)


def transfer(
    conn: psycopg.Connection,
    source: int,
    target: int,
    amount: int = 10,
    *,
    settle: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """A transfer recorded as the operator would; settled (or failed, for want of funds)
    unless `settle` is false (then it stays pending)."""
    new = NewTransfer(source, target, amount, None, uuid.uuid4().hex, dict(metadata or {}))
    tid = int(ledger.submit_transfer(conn, new, by=SYSTEM)["id"])
    if settle:
        ledger.settle_transfer(conn, tid)
    return tid


def newest_first(conn: psycopg.Connection, where: str = "true", *params: object) -> list[int]:
    """Ids of the transfers matching `where`, as the listing should order them."""
    rows = conn.execute(
        f"SELECT id FROM transfers WHERE {where} ORDER BY created_at DESC, id DESC",  # noqa: S608
        params,
    ).fetchall()
    return [int(row[0]) for row in rows]


def tagged(tag: str) -> str:
    return f"metadata%5Brun%5D={tag}"


@dataclass(frozen=True)
class Trio:
    """Three users: Ada with two accounts, Bob and Cy with one; a treasury; transfers among
    them, all tagged with `tag` in their metadata. `ids` names each transfer."""

    tag: str
    treasury: int
    ada: int
    ada_main: int
    ada_savings: int
    bob: int
    bob_main: int
    cy: int
    cy_main: int
    ids: dict[str, int]


@pytest.fixture
def trio(conn: psycopg.Connection) -> Trio:
    tag = uuid.uuid4().hex[:12]
    treasury = make_account(conn, treasury=True)
    ada, bob, cy = make_user(conn, "Ada"), make_user(conn, "Bob"), make_user(conn, "Cy")
    ada_main, ada_savings = make_account(conn, user_id=ada), make_account(conn, user_id=ada)
    bob_main, cy_main = make_account(conn, user_id=bob), make_account(conn, user_id=cy)
    run = {"run": tag}
    ids = {
        "fund ada": transfer(conn, treasury, ada_main, 1_000, metadata={**run, "kind": "fund"}),
        "fund bob": transfer(conn, treasury, bob_main, 1_000, metadata={**run, "kind": "fund"}),
        "ada to bob": transfer(conn, ada_main, bob_main, 100, metadata={**run, "order": "o-1"}),
        "ada saves": transfer(conn, ada_main, ada_savings, 50, metadata=run),
        "bob to cy": transfer(conn, bob_main, cy_main, 25, metadata={**run, "order": "o-2"}),
        "cy overdraws": transfer(conn, cy_main, bob_main, 10_000, metadata=run),  # failed
        "bob to ada pending": transfer(conn, bob_main, ada_savings, 5, settle=False, metadata=run),
    }
    return Trio(tag, treasury, ada, ada_main, ada_savings, bob, bob_main, cy, cy_main, ids)


# --- GET /transfers: whose, and in which order ---------------------------------------------


def test_an_operator_key_lists_every_transfer_newest_first_each_once_across_pages(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    walked = operator.ids("/transfers", "limit=3")
    assert walked == newest_first(conn)
    assert len(walked) == len(set(walked)) >= len(trio.ids)


def test_a_page_holds_the_transfers_as_get_transfer_shows_them(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    resp = operator.get("/transfers", f"{tagged(trio.tag)}&limit=1000")
    assert resp.status_code == 200
    assert resp.json["next_cursor"] is None
    for item in resp.json["data"]:
        one = operator.get(f"/transfers/{item['id']}")
        assert one.json["data"] == item
    shown = {item["id"]: item for item in resp.json["data"]}
    assert shown[trio.ids["ada to bob"]]["metadata"] == {"run": trio.tag, "order": "o-1"}
    assert shown[trio.ids["cy overdraws"]]["failure_code"] == "insufficient_funds"


def test_a_users_key_lists_the_transfers_from_or_to_its_accounts_and_no_other(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    ids = trio.ids
    ada = as_user(recorder, conn, trio.ada).ids("/transfers")
    # "ada saves" is between two of Ada's accounts: listed once.
    mine = ["bob to ada pending", "ada saves", "ada to bob", "fund ada"]
    assert ada == [ids[name] for name in mine]
    cy = as_user(recorder, conn, trio.cy).ids("/transfers", "limit=2")
    assert cy == [ids["cy overdraws"], ids["bob to cy"]]
    bob = as_user(recorder, conn, trio.bob).ids("/transfers")
    assert set(bob) == {ids[n] for n in ids if n not in ("fund ada", "ada saves")}
    assert bob == newest_first(conn, "id = ANY(%s)", bob)


def test_a_user_with_more_accounts_than_are_planned_one_by_one_lists_the_same_way(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    """Past `EXPLICIT_ACCOUNTS` the ranges of each account are read in turn by one plan:
    the same transfers, in the same order, each once."""
    owner = make_user(conn)
    many = [make_account(conn, user_id=owner) for _ in range(listing.EXPLICIT_ACCOUNTS + 2)]
    made = [transfer(conn, trio.treasury, account, 5) for account in many[::3]]
    made += [transfer(conn, many[0], many[-1], 1), transfer(conn, many[1], trio.cy_main, 1)]
    made.append(transfer(conn, trio.bob_main, many[4], 7, settle=False))
    walked = as_user(recorder, conn, owner).ids("/transfers", "limit=2")
    assert sorted(walked) == sorted(made)
    assert walked == newest_first(conn, "id = ANY(%s)", made)


def test_a_user_without_accounts_lists_no_transfer(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    resp = as_user(recorder, conn, make_user(conn)).get("/transfers")
    assert resp.status_code == 200
    assert resp.json == {"data": [], "next_cursor": None}


def test_transfers_accepted_in_the_same_microsecond_are_ordered_by_id_and_split_across_pages(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    tied = list(trio.ids.values())[:5]
    conn.execute(
        "UPDATE transfers SET created_at = '2001-02-03T04:05:06.789012Z' WHERE id = ANY(%s)",
        (tied,),
    )
    walked = operator.ids("/transfers", f"{tagged(trio.tag)}&limit=2")
    assert walked == newest_first(conn, "metadata->>'run' = %s", trio.tag)
    assert walked[-5:] == sorted(tied, reverse=True)


# --- Filters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "names"),
    [
        ("pending", ["bob to ada pending"]),
        ("failed", ["cy overdraws"]),
        ("settled", ["bob to cy", "ada saves", "ada to bob", "fund bob", "fund ada"]),
    ],
)
def test_status_lists_only_transfers_in_that_status(
    operator: Api, trio: Trio, status: str, names: list[str]
) -> None:
    walked = operator.ids("/transfers", f"{tagged(trio.tag)}&status={status}")
    assert walked == [trio.ids[name] for name in names]


def test_failure_code_lists_only_failed_transfers_with_that_code(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    walked = operator.ids("/transfers", f"{tagged(trio.tag)}&failure_code=insufficient_funds")
    assert walked == [trio.ids["cy overdraws"]]
    other = operator.get("/transfers", f"{tagged(trio.tag)}&failure_code=balance_limit_exceeded")
    assert other.json == {"data": [], "next_cursor": None}
    everywhere = operator.ids("/transfers", "failure_code=insufficient_funds&limit=50")
    assert everywhere == newest_first(conn, "failure_code = 'insufficient_funds'")


def test_account_id_lists_the_transfers_out_of_and_into_that_account(
    operator: Api, trio: Trio
) -> None:
    walked = operator.ids("/transfers", f"account_id={trio.bob_main}")
    names = ["bob to ada pending", "cy overdraws", "bob to cy", "ada to bob", "fund bob"]
    assert walked == [trio.ids[name] for name in names]


def test_a_users_key_filtering_on_its_own_account_lists_that_accounts_transfers(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    ada = as_user(recorder, conn, trio.ada)
    walked = ada.ids("/transfers", f"account_id={trio.ada_savings}")
    assert walked == [trio.ids["bob to ada pending"], trio.ids["ada saves"]]


def test_a_users_key_filtering_on_someone_elses_account_lists_only_what_they_share(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    """Bob's account is not Ada's: Ada sees the transfers between it and her own accounts,
    nothing of what Bob did with others."""
    ada = as_user(recorder, conn, trio.ada)
    walked = ada.ids("/transfers", f"account_id={trio.bob_main}")
    assert walked == [trio.ids["bob to ada pending"], trio.ids["ada to bob"]]
    assert ada.ids("/transfers", f"account_id={trio.cy_main}") == []
    assert ada.ids("/transfers", f"account_id={trio.cy_main + 1_000_000}") == []


def test_created_after_and_created_before_are_strict_bounds(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    moments = {
        "fund ada": "2020-01-01T00:00:00Z",
        "fund bob": "2020-01-02T00:00:00Z",
        "ada to bob": "2020-01-03T00:00:00Z",
        "ada saves": "2020-01-04T00:00:00Z",
    }
    for name, at in moments.items():
        conn.execute("UPDATE transfers SET created_at = %s WHERE id = %s", (at, trio.ids[name]))
    within = operator.ids(
        "/transfers",
        f"{tagged(trio.tag)}&created_after=2020-01-01T00:00:00Z"
        "&created_before=2020-01-04T02:00:00%2B02:00",
    )
    assert within == [trio.ids["ada to bob"], trio.ids["fund bob"]]
    before = operator.ids(
        "/transfers", f"{tagged(trio.tag)}&created_before=2020-01-02T00:00:00.000001z"
    )
    assert before == [trio.ids["fund bob"], trio.ids["fund ada"]]
    after = operator.ids("/transfers", f"{tagged(trio.tag)}&created_after=2020-01-04T00:00:00Z")
    assert set(after) == set(trio.ids.values()) - {trio.ids[name] for name in moments}


def test_metadata_filters_match_key_and_value_and_combine_with_each_other(
    operator: Api, trio: Trio
) -> None:
    ids = trio.ids
    assert operator.ids("/transfers", f"{tagged(trio.tag)}&metadata%5Border%5D=o-1") == [
        ids["ada to bob"]
    ]
    funds = operator.ids("/transfers", f"{tagged(trio.tag)}&metadata[kind]=fund")
    assert funds == [ids["fund bob"], ids["fund ada"]]
    assert operator.ids("/transfers", f"{tagged(trio.tag)}&metadata[order]=o-3") == []
    assert operator.ids("/transfers", f"{tagged(trio.tag)}&metadata[nope]=o-1") == []
    assert len(operator.ids("/transfers", tagged(trio.tag))) == len(ids)


def test_filters_combine_and_keep_narrowing_across_pages(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    bob = as_user(recorder, conn, trio.bob)
    walked = bob.ids("/transfers", f"{tagged(trio.tag)}&status=settled&account_id={trio.cy_main}")
    assert walked == [trio.ids["bob to cy"]]
    walked = bob.ids("/transfers", f"status=settled&metadata[kind]=fund&account_id={trio.bob_main}")
    assert walked == [trio.ids["fund bob"]]


def test_a_metadata_value_may_be_empty_and_is_found_by_an_empty_filter(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    empty = transfer(conn, trio.treasury, trio.cy_main, metadata={"run": trio.tag, "note": ""})
    assert operator.ids("/transfers", f"{tagged(trio.tag)}&metadata[note]=") == [empty]


# --- Malformed parameters ------------------------------------------------------------------

BAD_TRANSFER_QUERIES = {
    "unknown parameter": ("stauts=failed", "invalid_request", "stauts"),
    "two unknown parameters": ("b=1&a=2", "invalid_request", "a, b"),
    "status twice": ("status=failed&status=settled", "invalid_request", "status"),
    "blank status": ("status=", "invalid_request", "status"),
    "unknown status": ("status=lost", "invalid_request", "status"),
    "upper-case status": ("status=FAILED", "invalid_request", "status"),
    "malformed failure_code": ("failure_code=Not-A-Code", "invalid_request", "failure_code"),
    "account_id not a number": ("account_id=abc", "invalid_request", "account_id"),
    "account_id zero": ("account_id=0", "invalid_request", "account_id"),
    "account_id too large": ("account_id=99999999999999999999", "invalid_request", "account_id"),
    "a date without a time": ("created_after=2024-06-01", "invalid_request", "created_after"),
    "a time without an offset": (
        "created_before=2024-06-01T00:00:00",
        "invalid_request",
        "created_before",
    ),
    "an offset whose + became a space": (
        "created_after=2024-06-01T00:00:00+02:00",
        "invalid_request",
        "send + in an offset as %2B",
    ),
    "a month that does not exist": (
        "created_after=2024-13-01T00:00:00Z",
        "invalid_request",
        "created_after",
    ),
    "words for a date": ("created_before=yesterday", "invalid_request", "created_before"),
    "after not before before": (
        "created_after=2024-06-02T00:00:00Z&created_before=2024-06-01T00:00:00Z",
        "invalid_request",
        "created_after must be earlier than created_before",
    ),
    "limit zero": ("limit=0", "invalid_request", "limit"),
    "limit over 1000": ("limit=1001", "invalid_request", "limit"),
    "limit not a number": ("limit=ten", "invalid_request", "limit"),
    "limit blank": ("limit=", "invalid_request", "limit"),
    "cursor of no list": ("cursor=not-a-cursor", "invalid_cursor", "cursor"),
    "cursor blank": ("cursor=", "invalid_cursor", "cursor"),
    "cursor of the entries list": (f"cursor={encode_cursor('e', 5)}", "invalid_cursor", "cursor"),
    "cursor of the accounts list": (f"cursor={encode_cursor('a', 5)}", "invalid_cursor", "cursor"),
    "cursor with one key": (f"cursor={encode_cursor('t', 5)}", "invalid_cursor", "cursor"),
    "cursor out of time's range": (
        f"cursor={encode_cursor('t', 2**62, 5)}",
        "invalid_cursor",
        "cursor",
    ),
    "metadata without a key": ("metadata=x", "invalid_request", "metadata[key]=value"),
    "metadata with an empty key": ("metadata[]=x", "invalid_request", "1 to 40 characters"),
    "metadata bracket unclosed": ("metadata[order=x", "invalid_request", "metadata[key]=value"),
    "metadata with a sub-key": ("metadata[a][b]=x", "invalid_request", "square brackets"),
    "metadata key too long": (f"metadata[{'k' * 41}]=x", "invalid_request", "1 to 40 characters"),
    "metadata value too long": (f"metadata[k]={'v' * 501}", "invalid_request", "500 characters"),
    "metadata key twice": ("metadata[k]=1&metadata[k]=2", "invalid_request", "metadata[k]"),
    "more metadata filters than keys": (
        "&".join(f"metadata[k{i}]=v" for i in range(21)),
        "invalid_request",
        "at most 20",
    ),
}


@pytest.mark.parametrize(
    ("query", "code", "named"), BAD_TRANSFER_QUERIES.values(), ids=BAD_TRANSFER_QUERIES.keys()
)
def test_a_malformed_transfer_query_is_400_with_a_stable_code_naming_the_parameter(
    operator: Api, conn: psycopg.Connection, query: str, code: str, named: str
) -> None:
    before = row_counts(conn)
    resp = operator.get("/transfers", query)
    assert resp.status_code == 400, resp.text
    assert resp.json["error"]["code"] == code
    assert named in resp.json["error"]["message"]
    assert row_counts(conn) == before


def test_a_cursor_keeps_working_with_the_filters_it_was_issued_with_only_as_a_position(
    operator: Api, trio: Trio
) -> None:
    """A cursor is a position in the newest-first order: the next page of a filtered list,
    or of another filter, starts after it."""
    first = operator.get("/transfers", f"{tagged(trio.tag)}&limit=2")
    cursor = first.json["next_cursor"]
    rest = operator.ids("/transfers", f"{tagged(trio.tag)}&limit=100&cursor={cursor}")
    assert [item["id"] for item in first.json["data"]] + rest == operator.ids(
        "/transfers", tagged(trio.tag)
    )


# --- GET /accounts and GET /users/me --------------------------------------------------------


def test_an_operator_key_lists_every_account_newest_first_with_balances(
    operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    walked = operator.ids("/accounts", "limit=4")
    assert walked == [int(r[0]) for r in conn.execute("SELECT id FROM accounts ORDER BY id DESC")]
    resp = operator.get("/accounts", f"user_id={trio.ada}")
    assert [(a["id"], a["balance"]) for a in resp.json["data"]] == [
        (trio.ada_savings, 50),
        (trio.ada_main, 850),
    ]
    assert resp.json["next_cursor"] is None


def test_a_users_key_lists_its_own_accounts_only(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    ada = as_user(recorder, conn, trio.ada)
    assert ada.ids("/accounts") == [trio.ada_savings, trio.ada_main]
    assert ada.ids("/accounts", f"user_id={trio.ada}") == [trio.ada_savings, trio.ada_main]
    assert ada.ids("/accounts", f"user_id={trio.bob}") == []
    resp = ada.get("/accounts")
    assert {a["user_id"] for a in resp.json["data"]} == {trio.ada}


def test_accounts_filter_on_currency(
    recorder: Recorder, operator: Api, conn: psycopg.Connection, trio: Trio
) -> None:
    yen = make_account(conn, user_id=trio.ada, currency="JPY")
    assert as_user(recorder, conn, trio.ada).ids("/accounts", "currency=JPY") == [yen]
    assert yen in operator.ids("/accounts", "currency=JPY&limit=1000")
    assert trio.ada_main not in operator.ids("/accounts", "currency=JPY&limit=1000")


BAD_ACCOUNT_QUERIES = {
    "unknown parameter": ("status=settled", "invalid_request", "status"),
    "user_id not a number": ("user_id=me", "invalid_request", "user_id"),
    "user_id twice": ("user_id=1&user_id=2", "invalid_request", "user_id"),
    "lower-case currency": ("currency=eur", "invalid_request", "currency"),
    "limit over 1000": ("limit=5000", "invalid_request", "limit"),
    "cursor of the transfers list": (
        f"cursor={encode_cursor('t', 10**15, 5)}",
        "invalid_cursor",
        "cursor",
    ),
    "cursor of no list": ("cursor=%F0%9F%92%B8", "invalid_cursor", "cursor"),
}


@pytest.mark.parametrize(
    ("query", "code", "named"), BAD_ACCOUNT_QUERIES.values(), ids=BAD_ACCOUNT_QUERIES.keys()
)
def test_a_malformed_account_query_is_400_with_a_stable_code_naming_the_parameter(
    operator: Api, query: str, code: str, named: str
) -> None:
    resp = operator.get("/accounts", query)
    assert resp.status_code == 400, resp.text
    assert resp.json["error"]["code"] == code
    assert named in resp.json["error"]["message"]


def test_users_me_is_the_user_a_users_key_acts_for(
    recorder: Recorder, conn: psycopg.Connection, trio: Trio
) -> None:
    resp = as_user(recorder, conn, trio.bob).get("/users/me")
    assert resp.status_code == 200
    assert resp.json["data"]["id"] == trio.bob
    assert (
        resp.json["data"]
        == as_user(recorder, conn, trio.bob).get(f"/users/{trio.bob}").json["data"]
    )


def test_users_me_with_an_operator_key_is_404_saying_it_acts_for_no_user(operator: Api) -> None:
    resp = operator.get("/users/me")
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "user_not_found"
    assert "operator key acts for no user" in resp.json["error"]["message"]
