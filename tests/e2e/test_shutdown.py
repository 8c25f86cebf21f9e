"""SIGTERM in the middle of a load: web and worker finish what they started and exit 0, no
accepted transfer is lost, and no process leaves a database connection behind."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from shared.config import Settings
from shared.db.pool import application_name
from tests.e2e.api import Answer, Client
from tests.e2e.conftest import Service
from tests.e2e.processes import wait_until
from tests.helpers import fund, make_account

CLIENT_THREADS = 12


class Load:
    """Client threads submitting random transfers between `accounts` until stopped."""

    def __init__(self, client: Client, accounts: list[int]) -> None:
        self._client = client
        self._accounts = accounts
        self._lock = threading.Lock()
        self.accepted: list[int] = []
        self.acknowledged: set[str] = set()  # Idempotency-Keys answered 202
        self.statuses: Counter[int | None] = Counter()
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}")
            for n in range(CLIENT_THREADS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads)

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            source, target = rng.sample(self._accounts, 2)
            key = uuid.uuid4().hex
            answer = self._client.submit_transfer(
                source,
                target,
                rng.randint(1, 500),
                key=key,
                deadline=time.monotonic() + 5,
                give_up=self.stop,
            )
            self._record(key, answer)

    def _record(self, key: str, answer: Answer) -> None:
        with self._lock:
            self.statuses[answer.status] += 1
            if answer.status == 202:
                self.accepted.append(int(answer.body["data"]["id"]))
                self.acknowledged.add(key)

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)


def settle_connections(db: psycopg.Connection, database_name: str, own: set[str]) -> list[str]:
    """application_name of every connection to the test database held by a Settle process
    other than this test process."""
    rows = db.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = %s"
        " AND application_name LIKE 'settle:%%'",
        (database_name,),
    ).fetchall()
    return sorted(name for (name,) in rows if name not in own)


@pytest.mark.e2e
def test_sigterm_mid_load_loses_no_transfer_and_leaves_no_connection_behind(
    service: Service, db: psycopg.Connection, settings: Settings, database_name: str
) -> None:
    web = service.start_web()
    worker = service.start_worker()
    sweeper = service.start_sweeper()
    treasury = make_account(db, treasury=True)
    accounts = [make_account(db) for _ in range(10)]
    for account in accounts:
        fund(db, treasury, account, 100_000)

    with Client(service.port) as client:
        load = Load(client, accounts)
        load.start()
        try:
            wait_until(
                lambda: load.accepted_count() >= 300,
                timeout=60,
                what="300 transfers are accepted",
            )
            # As honcho stops a Procfile: SIGTERM to each process group, while requests fly.
            web.send(signal.SIGTERM, group=True)
            worker.send(signal.SIGTERM, group=True)
            assert (web.wait(timeout=40), worker.wait(timeout=40)) == (0, 0)
        finally:
            load.join()

    assert load.statuses[500] == 0, load.statuses
    accepted = list(load.accepted)
    assert len(set(accepted)) == len(accepted) >= 300
    # In-flight requests were answered before the web processes exited: every transfer the
    # database recorded was acknowledged to its client (none committed and then dropped).
    recorded = {
        key
        for (key,) in db.execute(
            "SELECT idempotency_key FROM transfers WHERE from_account_id = ANY(%s)", (accounts,)
        ).fetchall()
    }
    assert recorded - load.acknowledged == set()

    # A new worker (and the sweeper, for any message lost on the way) finishes the rest.
    replacement = service.start_worker()

    def unfinished() -> int:
        row = db.execute(
            "SELECT count(*) FROM transfers WHERE status = 'pending'"
            " AND (id = ANY(%s) OR from_account_id = ANY(%s))",
            (accepted, accounts),
        ).fetchone()
        assert row is not None
        return int(row[0])

    wait_until(lambda: unfinished() == 0, timeout=60, what="every accepted transfer is terminal")
    statuses = dict(
        db.execute(
            "SELECT status, count(*) FROM transfers WHERE id = ANY(%s) GROUP BY status",
            (accepted,),
        ).fetchall()
    )
    assert set(statuses) <= {"settled", "failed"}
    assert sum(statuses.values()) == len(accepted)

    assert (replacement.stop(), sweeper.stop()) == (0, 0)

    own = {application_name(role, settings.hostname) for role in ("web-test", "worker", "sweeper")}
    left: list[str] = []

    def none_left() -> bool:
        left[:] = settle_connections(db, database_name, own)
        return not left

    wait_until(none_left, timeout=10, what="no Settle process holds a connection")
    assert left == []


@pytest.mark.e2e
def test_requests_running_and_queued_at_sigterm_are_answered_before_the_web_server_exits(
    service: Service, db: psycopg.Connection, settings: Settings
) -> None:
    # One process with one thread: the first request runs, the second waits in the queue.
    service.env.update(
        WEB_PROCESSES="1", WEB_THREADS="1", LOCK_TIMEOUT_MS="30000", STATEMENT_TIMEOUT_MS="30000"
    )
    web = service.start_web()
    treasury = make_account(db, treasury=True)
    payer, payee = make_account(db), make_account(db)
    fund(db, treasury, payer, 1_000)
    answers: list[tuple[int | None, object]] = []

    def post(client: Client) -> None:
        body = {"from_account_id": payer, "to_account_id": payee, "amount": 100}
        status, _, answer = client.request(
            "POST", "/transfers", body, {"Idempotency-Key": uuid.uuid4().hex}
        )
        answers.append((status, answer))

    with (
        Client(service.port) as first,
        Client(service.port) as second,
        psycopg.connect(settings.database_url) as holder,
    ):
        # Recording a transfer takes a key-share lock on its accounts; this blocks it.
        holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (payer,))
        running = threading.Thread(target=post, args=(first,))
        running.start()
        wait_until(
            lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE %s AND wait_event_type = 'Lock'",
                ("settle:web:%",),
            ).fetchone()[0],
            timeout=10,
            what="the first request waits for the account lock inside the web process",
        )
        # The process reads its queue once a second and warns when a request waits (the
        # first request was queued only for the instant before the thread took it).
        queued = threading.Thread(target=post, args=(second,))
        queued.start()
        web.wait_for_log("1 request(s) waiting for a web thread")

        web.send(signal.SIGTERM, group=True)
        web.wait_for_log("draining 2 request(s) in flight")
        holder.rollback()
        running.join(timeout=30)
        queued.join(timeout=30)

    assert web.wait(timeout=30) == 0
    assert [status for status, _ in answers] == [202, 202], answers


@pytest.mark.e2e
@pytest.mark.parametrize("group", [True, False], ids=["process-group", "main-process"])
def test_a_web_server_stopped_while_it_forks_exits_0(service: Service, group: bool) -> None:
    web = service.start("web")
    # The parent logs this right after forking: its children are still importing the app.
    web.wait_for_log("listening on", interval=0.002)
    web.send(signal.SIGTERM, group=group)
    assert web.wait(timeout=30) == 0
