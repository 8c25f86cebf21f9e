"""Long-polls on a real waitress server in this process, with a real event watch: a waiting
request is answered with the event that appears while it waits (not with the empty answer
its deadline would give), holds no database connection meanwhile, and at most
EVENT_WAITERS wait at once, so ordinary requests are still served; closing the watch (a web
process stopping) answers every waiter at once; all of it through PgBouncer too.

No assertion is about time: a long-poll here waits up to 30 s, and each test checks that the
answer holds the event (a deadline answer holds none), or that the waiters are gone well
before any deadline could have freed them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.db.pool import create_pool
from shared.events.waiting import EventWatch
from shared.ledger import auth
from shared.ledger import operations as ledger
from shared.ledger.audit import find_violations
from shared.testing.scratch import scratch_database
from tests.helpers import make_account, make_user, submit, wait_until
from tests.pgbouncer import PgBouncer, pooled_env
from web.app import create_app
from web.waitress_adapter import WaitressServer

WAIT = 30
THREADS = 4
WAITERS = 2


@pytest.fixture(scope="module")
def poll_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_poll") as url:
        yield url
        with psycopg.connect(url, autocommit=True) as conn:
            assert find_violations(conn) == [], "the long-poll tests broke the ledger"


@pytest.fixture
def conn(poll_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(poll_db, autocommit=True) as c:
        yield c


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Served:
    """A waitress server with the app, `THREADS` threads, a pool of ONE connection (so a
    waiter holding one would starve every other request) and an event watch admitting
    `WAITERS`."""

    port: int
    watch: EventWatch
    key: str
    threads: list[threading.Thread] = field(default_factory=list)

    def get(
        self, path: str, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT + 30)
        try:
            conn.request(
                "GET",
                path,
                headers={"Authorization": f"Bearer {key or self.key}", **(headers or {})},
            )
            resp = conn.getresponse()
            return Answer(
                resp.status,
                {name.lower(): value for name, value in resp.getheaders()},
                json.loads(resp.read()),
            )
        finally:
            conn.close()

    def later(self, path: str, **kwargs: Any) -> dict[str, Answer]:
        """GET `path` from a thread of its own; the answer lands in the dict returned."""
        box: dict[str, Answer] = {}
        thread = threading.Thread(target=lambda: box.update(answer=self.get(path, **kwargs)))
        thread.start()
        self.threads.append(thread)
        return box

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=WAIT + 30)
        self.threads.clear()

    def waiting(self, count: int) -> None:
        wait_until(lambda: self.watch.waiting == count, timeout=10, what=f"{count} waiting")


@contextlib.contextmanager
def serving(settings: Settings, database_url: str) -> Iterator[Served]:
    served_settings = settings.with_(database_url=database_url)
    pool = create_pool(served_settings, "web-poll", size=1)
    watch_pool = create_pool(served_settings, "events", size=1)
    pool.open(wait=True, timeout=10)
    watch_pool.open(wait=True, timeout=10)
    watch = EventWatch(watch_pool, limit=WAITERS, interval=0.02)
    watch.start()
    app = create_app(
        served_settings,
        pool=pool,
        enqueue=lambda transfer_id: None,
        ping_broker=lambda: True,
        watch=watch,
    )
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    server = WaitressServer(app, sock, threads=THREADS)
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            server.run_once(timeout=0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    with psycopg.connect(database_url, autocommit=True) as conn:
        key = auth.create_key(conn, user_id=None).key
    served = Served(int(sock.getsockname()[1]), watch, key)
    try:
        yield served
    finally:
        watch.close()
        served.join()
        done.set()
        thread.join(timeout=10)
        server.shutdown(timeout=5)
        server.close()
        sock.close()
        pool.close()
        watch_pool.close()


@pytest.fixture
def served(settings: Settings, poll_db: str) -> Iterator[Served]:
    with serving(settings, poll_db) as found:
        yield found


def newest(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM transfer_events").fetchone()
    assert row is not None
    return int(row[0])


def test_a_long_poll_is_answered_with_the_event_that_appears_while_it_waits(
    served: Served, conn: psycopg.Connection
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    box = served.later(f"/events?after={newest(conn)}&wait={WAIT}")
    served.waiting(1)

    transfer = submit(conn, treasury, payee, 10)

    served.join()
    answer = box["answer"]
    assert answer.status == 200
    assert [(e["type"], e["data"]["id"]) for e in answer.body["data"]] == [
        ("transfer.accepted", transfer)
    ]
    assert "retry-after" not in answer.headers


def test_a_users_long_poll_is_answered_with_its_own_event_only(
    served: Served, conn: psycopg.Connection
) -> None:
    """Another user's event moves the horizon and wakes the waiter, which finds nothing of
    its own and waits on; its answer holds its own event alone."""
    treasury = make_account(conn, treasury=True)
    ada = make_user(conn)
    ada_account = make_account(conn, user_id=ada)
    key = auth.create_key(conn, user_id=ada).key
    box = served.later(f"/events?after={newest(conn)}&wait={WAIT}", key=key)
    served.waiting(1)

    foreign = submit(conn, treasury, make_account(conn), 10)
    wait_until(lambda: served.watch.horizon >= newest(conn), timeout=10, what="the watch sees it")
    own = submit(conn, treasury, ada_account, 10)

    served.join()
    assert [e["data"]["id"] for e in box["answer"].body["data"]] == [own]
    assert foreign != own


def test_prefer_wait_answers_a_transfer_as_soon_as_it_is_decided(
    served: Served, conn: psycopg.Connection
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    transfer = submit(conn, treasury, payee, 10)
    box = served.later(f"/transfers/{transfer}", headers={"Prefer": f"wait={WAIT}"})
    served.waiting(1)

    assert ledger.settle_transfer(conn, transfer) == ("settled", None)

    served.join()
    answer = box["answer"]
    assert answer.status == 200
    assert answer.body["data"]["status"] == "settled"
    assert answer.headers["preference-applied"] == f"wait={WAIT}"


def test_beyond_the_waiter_limit_a_long_poll_is_answered_at_once_and_ordinary_requests_still_are(
    served: Served, conn: psycopg.Connection
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    pending = submit(conn, treasury, payee, 10)
    after = newest(conn)
    boxes = [served.later(f"/events?after={after}&wait={WAIT}") for _ in range(WAITERS)]
    served.waiting(WAITERS)

    # No room for a third: answered at once, with what exists, and told to pause.
    third = served.get(f"/events?after={after}&wait={WAIT}")
    assert (third.status, third.body["data"], third.headers["retry-after"]) == (200, [], "1")
    prefer = served.get(f"/transfers/{pending}", headers={"Prefer": f"wait={WAIT}"})
    assert prefer.body["data"]["status"] == "pending"
    assert "preference-applied" not in prefer.headers
    # Two threads of four wait, holding no connection of the pool's one: others are served.
    for _ in range(10):
        assert served.get(f"/transfers/{pending}").status == 200
        assert served.get(f"/accounts/{payee}").status == 200
    assert served.watch.waiting == WAITERS

    ledger.settle_transfer(conn, pending)

    served.join()
    for box in boxes:
        assert [(e["type"], e["data"]["id"]) for e in box["answer"].body["data"]] == [
            ("transfer.settled", pending)
        ]


def test_closing_the_watch_answers_every_waiter_at_once_and_admits_no_more(
    served: Served, conn: psycopg.Connection
) -> None:
    after = newest(conn)
    boxes = [served.later(f"/events?after={after}&wait={WAIT}") for _ in range(WAITERS)]
    served.waiting(WAITERS)

    served.watch.close()

    served.waiting(0)  # freed long before their deadline
    served.join()
    for box in boxes:
        assert box["answer"].status == 200
        assert box["answer"].body["data"] == []
    late = served.get(f"/events?after={after}&wait={WAIT}")
    assert late.headers["retry-after"] == "1"


def test_long_polls_wake_through_pgbouncer_in_transaction_mode(
    settings: Settings, poll_db: str, pgbouncer: PgBouncer, conn: psycopg.Connection
) -> None:
    """The watch reads; it never LISTENs, so it needs no session of its own and runs over
    DATABASE_URL through the pooler like the pools do."""
    pooled = Settings.from_env(pooled_env(pgbouncer, poll_db))
    assert pooled.pooled
    pgbouncer.open_servers(poll_db)
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    with serving(pooled, pooled.database_url) as through:
        box = through.later(f"/events?after={newest(conn)}&wait={WAIT}")
        through.waiting(1)
        transfer = submit(conn, treasury, payee, 10)
        through.join()
    assert [e["data"]["id"] for e in box["answer"].body["data"]] == [transfer]


def test_a_transfer_that_is_not_the_users_is_not_found_rather_than_waited_on(
    served: Served, conn: psycopg.Connection
) -> None:
    treasury, payee = make_account(conn, treasury=True), make_account(conn)
    transfer = submit(conn, treasury, payee, 10)
    stranger = auth.create_key(conn, user_id=make_user(conn)).key
    answer = served.get(f"/transfers/{transfer}", key=stranger, headers={"Prefer": "wait=30"})
    assert answer.status == 404
    ledger.settle_transfer(conn, transfer)
