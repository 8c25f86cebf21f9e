"""Transfer events and GET /events through the real app, on a database of their own (so that
"every event" is a set the tests know): each change writes its event in its own transaction
and nothing else does, readers never skip an event that commits late, each key sees its own,
and every malformed parameter is refused.

Every answer is held to the OpenAPI document (tests/contract.py), and the module's ledger,
events included, must pass the audit at the end.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.events import feed
from shared.ledger import auth, dead_letters, operator_actions
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewTransfer
from shared.testing.scratch import scratch_database
from tests.contract import Recorder, held_to_document
from tests.helpers import fund, make_account, make_user, opened_pool, submit
from web.app import create_app


@pytest.fixture(scope="module")
def events_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_events") as url:
        yield url
        with psycopg.connect(url, autocommit=True) as conn:
            assert find_violations(conn) == [], "the event tests broke the ledger"


@pytest.fixture(scope="module")
def events_pool(settings: Settings, events_db: str) -> Iterator[ConnectionPool]:
    with opened_pool(settings.with_(database_url=events_db), "web-events", size=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def recorder(settings: Settings, events_db: str, events_pool: ConnectionPool) -> Iterator[Recorder]:
    """The app on the module's database; it hands no transfer to a broker, and every answer
    it gives is held to the document."""
    app = create_app(
        settings.with_(database_url=events_db),
        pool=events_pool,
        enqueue=lambda transfer_id: None,
        ping_broker=lambda: True,
    )
    with held_to_document(app) as found:
        yield found


@pytest.fixture
def conn(events_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(events_db, autocommit=True) as c:
        yield c


def client(recorder: Recorder, key: str) -> TestClient:
    return TestClient(recorder, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def operator(recorder: Recorder, events_db: str) -> TestClient:
    with psycopg.connect(events_db, autocommit=True) as c:
        return client(recorder, auth.create_key(c, user_id=None).key)


def last_event(conn: psycopg.Connection) -> int:
    """The newest event id (the `after` from which a test reads only its own events)."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM transfer_events").fetchone()
    assert row is not None
    return int(row[0])


def read_all(api: TestClient, after: int, query: str = "") -> list[dict]:
    """Every event after `after` as `api`'s key sees them, page by page (`next_after`)."""
    found: list[dict] = []
    for _ in range(1000):
        resp = api.simulate_get("/events", query_string=f"after={after}&limit=2{query}")
        assert resp.status_code == 200, resp.text
        found += resp.json["data"]
        after = resp.json["next_after"]
        if not resp.json["has_more"]:
            return found
    raise AssertionError("has_more never became false")


def test_each_change_of_a_transfer_is_an_event_with_the_transfer_as_the_change_left_it(
    conn: psycopg.Connection, operator: TestClient
) -> None:
    start = last_event(conn)
    treasury, payer, payee = (
        make_account(conn, treasury=True),
        make_account(conn),
        make_account(conn),
    )
    seen: list[tuple[str, dict]] = []  # (type, the transfer as GET /transfers/{id} said then)

    def now(transfer_id: int, kind: str) -> None:
        resp = operator.simulate_get(f"/transfers/{transfer_id}")
        seen.append((kind, resp.json["data"]))

    posted = operator.simulate_post(
        "/transfers",
        json={"from_account_id": treasury, "to_account_id": payer, "amount": 500},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    funded = posted.json["data"]["id"]
    seen.append(("transfer.accepted", posted.json["data"]))
    ledger.settle_transfer(conn, funded)
    now(funded, "transfer.settled")

    refused = submit(conn, payee, payer, 9_999)
    now(refused, "transfer.accepted")
    ledger.settle_transfer(conn, refused)
    now(refused, "transfer.failed")

    stuck = submit(conn, payer, payee, 100)
    now(stuck, "transfer.accepted")
    # Its one attempt fails for good (a retry budget of none): dead-lettered.
    outcome = ledger.record_failed_attempt(
        conn, [stuck], "LockNotAvailable: held", retry=ledger.RetryPolicy(max_retries=0)
    )
    assert outcome[stuck].status == "dead-lettered"
    now(stuck, "transfer.dead_lettered")
    acting = operator_actions.require_acting(SYSTEM)
    assert operator_actions.retry(conn, [stuck], by=acting) == [stuck]
    now(stuck, "transfer.released")
    assert dead_letters.mark(conn, stuck, "boom")
    now(stuck, "transfer.dead_lettered")
    assert operator_actions.cancel(conn, stuck, by=acting)
    now(stuck, "transfer.cancelled")

    events = read_all(operator, start)
    assert [(e["type"], e["data"]) for e in events] == seen
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert seen[3][1]["failure_code"] == "insufficient_funds"  # the failed event says why
    assert seen[-1][1]["failure_code"] == "cancelled_by_operator"


def test_a_change_whose_transaction_rolls_back_leaves_no_event(
    conn: psycopg.Connection, events_db: str
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    pending = submit(conn, treasury, payee, 10)
    start = last_event(conn)
    with psycopg.connect(events_db) as tx:  # one transaction, rolled back
        submit(tx, treasury, payee, 20)
        assert ledger.settle_transfer(tx, pending) == ("settled", None)
        assert dead_letters.mark(tx, submit(tx, treasury, payee, 30), "boom")
        assert last_event(tx) > start  # the events exist inside it...
        tx.rollback()
    assert last_event(conn) == start  # ...and went with it
    assert ledger.get_transfer(conn, pending, by=SYSTEM)["status"] == "pending"
    ledger.settle_transfer(conn, pending)


def test_a_statement_that_changes_no_transfers_state_writes_no_event(
    conn: psycopg.Connection,
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    pending = submit(conn, treasury, payee, 10)
    conn.execute(
        "UPDATE transfers SET enqueued_at = now() - interval '1 hour' WHERE id = %s", (pending,)
    )
    start = last_event(conn)
    assert pending in ledger.claim_stale_pending(conn, grace_seconds=60, batch=1000)
    retried = ledger.record_failed_attempt(conn, [pending], "DeadlockDetected: once")
    assert retried[pending].status == "retry"  # an attempt counted: attempts moved, state not
    assert last_event(conn) == start
    conn.execute("UPDATE transfers SET next_attempt_at = NULL WHERE id = %s", (pending,))
    ledger.settle_transfer(conn, pending)
    assert last_event(conn) == start + 1


def test_the_feed_stops_below_an_event_that_a_transaction_in_flight_holds(
    conn: psycopg.Connection, events_db: str, operator: TestClient
) -> None:
    """The skip that increasing ids alone allow: a transaction takes an id, another takes the
    next one and commits first. A reader shown the second would go on from it and never see
    the first. The feed shows neither until the first commits, then both, in order."""
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    start = last_event(conn)
    with psycopg.connect(events_db) as slow:
        early = submit(slow, treasury, payee, 1)  # its event id is taken; not committed
        late = submit(conn, treasury, payee, 2)  # a later id, committed at once
        held, committed = (
            conn.execute("SELECT id FROM transfer_events WHERE transfer_id = %s", (tid,)).fetchone()
            for tid in (early, late)
        )
        assert held is None and committed is not None  # the early one is invisible yet

        during = operator.simulate_get("/events", query_string=f"after={start}").json
        assert [e["data"]["id"] for e in during["data"]] == []
        assert during["next_after"] < committed[0]  # never past the id still held
        slow.commit()

    after = operator.simulate_get("/events", query_string=f"after={during['next_after']}").json
    assert [(e["type"], e["data"]["id"]) for e in after["data"]] == [
        ("transfer.accepted", early),
        ("transfer.accepted", late),
    ]


def test_readers_catching_up_while_writers_commit_out_of_order_see_every_event_once(
    conn: psycopg.Connection, events_db: str
) -> None:
    """Writers whose transactions take event ids and commit in any order (some holding
    theirs open while others commit); a reader that goes on from each page's `next_after`
    sees every event exactly once, in id order."""
    treasury = make_account(conn, treasury=True)
    payees = [make_account(conn) for _ in range(4)]
    start = last_event(conn)
    writers, transactions = 6, 25
    done = threading.Event()
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with psycopg.connect(events_db) as tx:
                for i in range(transactions):
                    payee = payees[(n + i) % len(payees)]
                    transfer = submit(tx, treasury, payee, 1 + i)
                    if i % 3 == 0:  # a settlement in the same transaction: two events
                        ledger.settle_transfer(tx, transfer)
                    if (n + i) % 4 == 0:
                        # Hold the ids taken while the others commit theirs.
                        tx.execute("SELECT pg_sleep(0.002 * %s)", (n % 3,))
                    tx.commit()
        except BaseException as exc:
            failures.append(exc)

    seen: list[int] = []

    def read() -> None:
        after = start
        with psycopg.connect(events_db, autocommit=True) as reader:
            while True:
                finished = done.is_set()  # decided before the read: the last read is complete
                page = feed.read_page(
                    reader, feed.EventQuery(after=after, limit=7), by=SYSTEM, retention_days=30
                )
                seen.extend(item["id"] for item in page.items)
                after = page.next_after
                if finished and not page.has_more:
                    return

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    reader.join(timeout=120)
    assert not failures, failures

    written = [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM transfer_events WHERE id > %s ORDER BY id", (start,)
        ).fetchall()
    ]
    assert len(written) == writers * transactions + writers * ((transactions + 2) // 3)
    assert seen == written  # none skipped, none twice, in order


def test_a_users_key_sees_the_events_of_transfers_from_or_to_its_accounts_only(
    conn: psycopg.Connection, recorder: Recorder, operator: TestClient
) -> None:
    start = last_event(conn)
    treasury = make_account(conn, treasury=True)
    ada, bob = make_user(conn), make_user(conn)
    ada_eur, ada_usd = (
        make_account(conn, user_id=ada),
        make_account(conn, user_id=ada, currency="USD"),
    )
    bob_eur = make_account(conn, user_id=bob)
    usd_treasury = make_account(conn, treasury=True, currency="USD")
    to_ada = fund(conn, treasury, ada_eur, 100)
    to_ada_usd = fund(conn, usd_treasury, ada_usd, 100)
    ada_to_bob = fund(conn, ada_eur, bob_eur, 40)
    bob_out = fund(conn, bob_eur, treasury, 10)
    between_ada = submit(conn, ada_eur, make_account(conn, user_id=ada), 5)
    others = fund(conn, treasury, make_account(conn), 7)

    def transfers(api: TestClient, query: str = "") -> list[tuple[int, str]]:
        return [(e["data"]["id"], e["type"]) for e in read_all(api, start, query)]

    ada_api = client(recorder, auth.create_key(conn, user_id=ada).key)
    bob_api = client(recorder, auth.create_key(conn, user_id=bob).key)
    everything = transfers(operator)
    assert {tid for tid, _ in everything} == {
        to_ada,
        to_ada_usd,
        ada_to_bob,
        bob_out,
        between_ada,
        others,
    }
    assert transfers(ada_api) == [
        (tid, kind)
        for tid, kind in everything
        if tid in (to_ada, to_ada_usd, ada_to_bob, between_ada)
    ]
    assert transfers(bob_api) == [
        (tid, kind) for tid, kind in everything if tid in (ada_to_bob, bob_out)
    ]
    assert transfers(bob_api, "&types=transfer.settled") == [
        (ada_to_bob, "transfer.settled"),
        (bob_out, "transfer.settled"),
    ]
    # A user with no account sees nothing, and is told where to read on from.
    nobody = client(recorder, auth.create_key(conn, user_id=make_user(conn)).key)
    empty = nobody.simulate_get("/events", query_string=f"after={start}").json
    assert empty == {"data": [], "next_after": last_event(conn), "has_more": False}


def test_a_page_that_is_not_full_hands_on_the_horizon_so_a_filter_reads_on_from_there(
    conn: psycopg.Connection, operator: TestClient
) -> None:
    start = last_event(conn)
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    for _ in range(3):
        submit(conn, treasury, payee, 1)  # accepted only
    newest = last_event(conn)
    page = operator.simulate_get(
        "/events", query_string=f"after={start}&types=transfer.failed"
    ).json
    assert page == {"data": [], "next_after": newest, "has_more": False}
    full = operator.simulate_get("/events", query_string=f"after={start}&limit=2").json
    assert len(full["data"]) == 2 and full["has_more"] is True
    assert full["next_after"] == full["data"][-1]["id"]


def test_without_after_the_events_start_from_the_oldest_kept(operator: TestClient) -> None:
    first = operator.simulate_get("/events", query_string="limit=1").json["data"]
    assert first[0]["id"] == 1 and first[0]["type"] == "transfer.accepted"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("after=1&since=4", "since"),
        ("after=-1", "after"),
        ("after=x", "after"),
        ("after=", "after"),
        ("after=1&after=2", "after"),
        ("after=99999999999999999999", "after"),
        ("wait=31", "wait"),
        ("wait=1.5", "wait"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("types=transfer.settled,transfer.nope", "transfer.nope"),
        ("types=", "types"),
        ("types=transfer.settled,", "types"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it(operator: TestClient, query: str, named: str) -> None:
    resp = operator.simulate_get("/events", query_string=query)
    assert resp.status_code == 400, resp.text
    assert resp.json["error"]["code"] == "invalid_request"
    assert named in resp.json["error"]["message"]


def test_a_long_poll_without_a_watch_is_answered_at_once_with_retry_after(
    conn: psycopg.Connection, operator: TestClient
) -> None:
    """The app built without an event watch (EVENT_WAITERS=0) cannot wait: the empty answer
    comes at once, telling the client to pause before asking again."""
    newest = last_event(conn)
    resp = operator.simulate_get("/events", query_string=f"after={newest}&wait=30")
    assert resp.status_code == 200
    assert resp.json["data"] == []
    assert resp.headers["retry-after"] == "1"
    pending = submit(conn, make_account(conn, treasury=True), make_account(conn), 1)
    resp = operator.simulate_get(f"/transfers/{pending}", headers={"Prefer": "wait=30"})
    assert resp.json["data"]["status"] == "pending"
    assert "preference-applied" not in resp.headers
    assert resp.headers["vary"] == "Prefer"
    ledger.settle_transfer(conn, pending)
    decided = operator.simulate_get(f"/transfers/{pending}", headers={"Prefer": "wait=30"})
    assert decided.headers["preference-applied"] == "wait=30"  # decided: nothing to wait for


def test_submitting_through_the_api_writes_the_accepted_event_once_per_transfer(
    conn: psycopg.Connection, operator: TestClient
) -> None:
    """A replay of the Idempotency-Key answers the same transfer and writes no event."""
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    start = last_event(conn)
    body = {"from_account_id": treasury, "to_account_id": payee, "amount": 3}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = operator.simulate_post("/transfers", json=body, headers=key)
    again = operator.simulate_post("/transfers", json=body, headers=key)
    assert first.json == again.json
    events = read_all(operator, start)
    assert [(e["type"], e["data"]["id"]) for e in events] == [
        ("transfer.accepted", first.json["data"]["id"])
    ]
    new = NewTransfer(treasury, payee, 3, None, uuid.uuid4().hex)
    assert ledger.submit_transfer(conn, new, by=SYSTEM)["status"] == "pending"
