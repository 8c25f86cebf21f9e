"""Long-polls on the real processes: a client waits for its transfer's outcome and for new
events instead of polling, each web process's event watch holds the connection the budget
plans for it (and its lease shows it), and SIGTERM answers the waiting requests at once
instead of waiting out their deadlines."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from shared.config import Settings
from shared.db.activity import connections_by_role
from shared.db.budget import capacity as budget_capacity
from shared.db.budget import make_plan
from tests.e2e.api import Client
from tests.e2e.conftest import Service
from tests.helpers import make_account, wait_until

WAIT = 30


def newest_event(db: psycopg.Connection) -> int:
    row = db.execute("SELECT coalesce(max(id), 0) FROM transfer_events").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.e2e
def test_a_client_waits_for_its_transfers_outcome_and_its_events_instead_of_polling(
    service: Service, db: psycopg.Connection, database_name: str
) -> None:
    db.execute("DELETE FROM connection_leases")  # those of processes earlier tests killed
    service.start_web()
    treasury, payee = make_account(db, treasury=True), make_account(db)
    after = newest_event(db)

    with Client(service.port, timeout=WAIT + 30) as client:
        status, _, posted = client.request(
            "POST",
            "/transfers",
            {"from_account_id": treasury, "to_account_id": payee, "amount": 25},
            {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert status == 202
        transfer = posted["data"]["id"]
        waited: dict[str, object] = {}

        def wait_for_outcome() -> None:
            with Client(service.port, timeout=WAIT + 30) as own:
                waited["transfer"] = own.request(
                    "GET", f"/transfers/{transfer}", headers={"Prefer": f"wait={WAIT}"}
                )

        waiter = threading.Thread(target=wait_for_outcome)
        waiter.start()
        service.start_worker()  # the outcome comes once a worker runs
        waiter.join(timeout=WAIT + 30)
        status, headers, body = waited["transfer"]  # type: ignore[misc]
        assert (status, body["data"]["status"]) == (200, "settled")
        assert headers["preference-applied"] == f"wait={WAIT}"

        status, _, events = client.request("GET", f"/events?after={after}&wait={WAIT}")
        assert [(e["type"], e["data"]["id"]) for e in events["data"]] == [
            ("transfer.accepted", transfer),
            ("transfer.settled", transfer),
        ]

    # Each web process holds one connection for its event watch, leased like a pool.
    processes = int(service.env["WEB_PROCESSES"])
    env_settings = Settings.from_env(service.env)
    plan = make_plan(env_settings, budget_capacity(env_settings))
    assert plan.events.total == processes
    wait_until(
        lambda: connections_by_role(db, database_name)["events"] == processes,
        timeout=10,
        what="each web process's event watch is connected",
    )
    leases = db.execute(
        "SELECT holder, wanted, granted FROM connection_leases WHERE role = 'events'"
    ).fetchall()
    assert len(leases) == processes
    assert all(holder.startswith("settle:events:") and (w, g) == (1, 1) for holder, w, g in leases)
    for process in list(service.processes):
        assert process.stop() == 0


@pytest.mark.e2e
def test_sigterm_answers_the_waiting_long_polls_at_once_rather_than_at_their_deadline(
    service: Service, db: psycopg.Connection
) -> None:
    """WEB_SHUTDOWN_TIMEOUT is far below the long-polls' wait: if the drain waited for them,
    it would give up on them, cut them off and exit 1."""
    service.env.update(WEB_PROCESSES="1", WEB_THREADS="4", WEB_SHUTDOWN_TIMEOUT="5")
    web = service.start_web()
    after = newest_event(db)
    answers: list[tuple[int | None, dict[str, str], object]] = []
    lock = threading.Lock()

    def long_poll() -> None:
        with Client(service.port, timeout=WAIT + 30) as client:
            while True:  # turned away while the probe below held a place: ask again
                answer = client.request("GET", f"/events?after={after}&wait={WAIT}")
                if "retry-after" not in answer[1]:
                    break
        with lock:
            answers.append(answer)

    waiters = [threading.Thread(target=long_poll) for _ in range(2)]  # EVENT_WAITERS: 4 // 2
    for thread in waiters:
        thread.start()
    with Client(service.port) as client:
        # Both wait once one more is turned away at once (the probe is the only other).
        wait_until(
            lambda: "retry-after" in client.request("GET", f"/events?after={after}&wait=1")[1],
            timeout=10,
            what="two long-polls wait",
        )

    assert web.stop() == 0

    for thread in waiters:
        thread.join(timeout=WAIT + 30)
    assert len(answers) == 2
    for status, _, body in answers:
        assert status == 200
        assert body["data"] == [] and body["has_more"] is False  # type: ignore[index]
