"""Webhooks through the real processes (web, worker with its webhook delivery processes,
sweeper with its dispatcher) to real receivers on 127.0.0.1: the receiver the docs give
callers (docs/examples/webhook_receiver.py, which verifies every signature) receives every
event after being down for a while; a webhook worker process killed with SIGKILL in the
middle of deliveries loses none; and a receiver that answers slowly and with errors never
holds up settlement.

Each test ends with `settle audit --pending-threshold 0` passing on its database.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from shared.broker.messages import WEBHOOK_QUEUE
from shared.webhooks import signing
from tests.e2e.api import Client
from tests.faults.conftest import Faults, FaultsFactory
from tests.faults.load import Load, accounts_with_money, random_plan
from tests.faults.processes import dramatiq_tree
from tests.helpers import wait_until
from tests.receivers import ExampleReceiver, RecordingReceiver

#: Quick retries, so that a receiver that comes back is reached within seconds.
QUICK = {
    "WEBHOOK_PROCESSES": "1",
    "WEBHOOK_THREADS": "4",
    "WEBHOOK_MIN_BACKOFF_SECONDS": "0.3",
    "WEBHOOK_MAX_BACKOFF_SECONDS": "1",
    "SWEEPER_GRACE_SECONDS": "2",
}


def start_service(faults: Faults) -> None:
    faults.start_web()
    worker = faults.start_worker()
    # The worker processes that settle, and the one that delivers.
    worker.wait_for_log("Worker process is ready for action.", count=3, timeout=60)
    faults.start_sweeper()


def subscribe(faults: Faults, url: str, types: list[str] | None = None) -> dict:
    body = {
        "url": url,
        "event_types": types or ["transfer.accepted", "transfer.settled", "transfer.failed"],
    }
    with Client(faults.port, key=faults.api_key) as client:
        status, _, answer = client.request("POST", "/webhook-endpoints", body)
    assert status == 201, answer
    return dict(answer["data"])


def run_transfers(faults: Faults, accounts: list[int], count: int, seed: int) -> list[int]:
    load = Load(faults.port, random_plan(accounts, count, seed), api_key=faults.api_key).start()
    load.join(timeout=90)
    assert load.complete, load.statuses
    return load.ids()


def event_ids(conn: psycopg.Connection, transfer_ids: list[int]) -> set[int]:
    rows = conn.execute(
        "SELECT id FROM transfer_events WHERE transfer_id = ANY(%s)", (transfer_ids,)
    ).fetchall()
    return {int(row[0]) for row in rows}


def delivery_states(conn: psycopg.Connection, endpoint_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM webhook_deliveries WHERE endpoint_id = %s GROUP BY 1",
        (endpoint_id,),
    ).fetchall()
    return {str(status): int(n) for status, n in rows}


def test_a_receiver_that_was_down_receives_every_event_once_it_is_back_each_one_verified(
    make_faults: FaultsFactory, fault_database: str, settings, tmp_path: Path
) -> None:
    faults = make_faults(fault_database, settings.message_broker_url, **QUICK)
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 10, 50_000)
    start_service(faults)
    receiver = ExampleReceiver(tmp_path, [])
    hook = subscribe(faults, receiver.url)
    receiver.secrets = [hook["secret"]]

    # Down: every delivery fails (connection refused) and is retried.
    transfers = run_transfers(faults, accounts, 30, seed=1)
    faults.wait_until_finished(transfers, timeout=60)
    with faults.connect() as conn:
        expected = event_ids(conn, transfers)
        assert len(expected) == 2 * len(transfers)

        def all_tried_and_failing() -> bool:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE attempts >= 1 AND status = 'pending'"
                " AND last_status_code IS NULL AND last_error IS NOT NULL)"
                " FROM webhook_deliveries WHERE endpoint_id = %s",
                (hook["id"],),
            ).fetchone()
            return row is not None and row[0] == row[1] == len(expected)

        wait_until(all_tried_and_failing, timeout=60, what="every delivery failed once")

    receiver.start()
    try:
        wait_until(
            lambda: {e["id"] for e in receiver.events()} >= expected,
            timeout=60,
            what="the receiver has every event",
        )
        with faults.connect() as conn:
            wait_until(
                lambda: delivery_states(conn, hook["id"]) == {"delivered": len(expected)},
                timeout=30,
                what="every delivery is delivered",
            )
            refused = conn.execute(
                "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d"
                " ON d.id = a.delivery_id WHERE d.endpoint_id = %s AND a.status_code IS NULL",
                (hook["id"],),
            ).fetchone()
            assert refused is not None and refused[0] >= len(expected)

        # What arrived is each event as GET /events shows it.
        handled = {e["id"]: e for e in receiver.events()}
        assert len(receiver.events()) == len(handled)  # each handled once
        with Client(faults.port, key=faults.api_key) as client:
            after, listed = min(expected) - 1, {}
            while True:
                status, _, page = client.request("GET", f"/events?after={after}&limit=1000")
                assert status == 200
                listed.update({e["id"]: e for e in page["data"] if e["id"] in expected})
                if not page["has_more"]:
                    break
                after = page["next_after"]
        assert {i: handled[i] for i in expected} == listed

        # A body altered on the way is refused by the receiver's check.
        original = json.dumps(handled[min(expected)], separators=(",", ":")).encode()
        header = signing.signature_header([hook["secret"]], int(time.time()), original)
        tampered = original.replace(b'"amount":', b'"amount":1')
        for body, status in ((tampered, 400), (original, 200)):
            conn_http = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
            conn_http.request(
                "POST",
                "/",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Settle-Event-Id": str(min(expected)),
                    "Settle-Signature": header,
                },
            )
            assert conn_http.getresponse().status == status
            conn_http.close()
        assert len(receiver.events()) == len(handled)  # the replay was seen before
    finally:
        receiver.stop()
    faults.audit()


@pytest.fixture
def hooks_on_each_broker(
    make_faults: FaultsFactory, fault_database: str, broker_url: str
) -> Faults:
    return make_faults(fault_database, broker_url, **QUICK)


def test_a_webhook_worker_killed_mid_delivery_loses_no_event(
    hooks_on_each_broker: Faults,
) -> None:
    faults = hooks_on_each_broker
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 10, 50_000)
    start_service(faults)
    receiver = RecordingReceiver(delay=0.5)  # slow enough that attempts are in flight
    try:
        hook = subscribe(faults, receiver.url)
        transfers = run_transfers(faults, accounts, 40, seed=2)
        wait_until(lambda: len(receiver.received()) >= 8, timeout=60, what="deliveries begin")
        worker = next(p for p in faults.processes if p.role == "worker")
        master, workers = dramatiq_tree(worker.pid, WEBHOOK_QUEUE)
        faults.strays += workers
        wait_until(lambda: receiver.in_flight > 0, timeout=10, what="a delivery in flight")
        os.kill(workers[0], signal.SIGKILL)
        worker.wait_for_log("dramatiq exited (", timeout=30)

        faults.wait_until_finished(transfers, timeout=60)
        with faults.connect() as conn:
            expected = event_ids(conn, transfers)
            wait_until(
                lambda: set(receiver.event_ids()) >= expected,
                timeout=90,
                what="the receiver got every event at least once",
            )
            wait_until(
                lambda: delivery_states(conn, hook["id"]) == {"delivered": len(expected)},
                timeout=30,
                what="every delivery is delivered",
            )
        assert set(receiver.event_ids()) == expected  # nothing else, nothing missing
    finally:
        receiver.stop()
    faults.audit()


def test_a_slow_failing_receiver_never_holds_up_settlement(
    make_faults: FaultsFactory, fault_database: str, settings
) -> None:
    """Every delivery waits out the 5 s timeout and fails: 600 deliveries would take the
    webhook threads minutes. Settlement runs on threads of its own and finishes meanwhile."""
    faults = make_faults(fault_database, settings.message_broker_url, **QUICK)
    with faults.connect() as conn:
        _, accounts = accounts_with_money(conn, 20, 50_000)
    start_service(faults)
    receiver = RecordingReceiver(status=500, delay=10.0)
    try:
        hook = subscribe(faults, receiver.url)
        transfers = run_transfers(faults, accounts, 300, seed=3)
        faults.wait_until_finished(transfers, timeout=120)
        with faults.connect() as conn:
            states = delivery_states(conn, hook["id"])
            # All settled or failed, while not one delivery succeeded, most still wait, and
            # the webhook threads were busy with the receiver all along.
            assert "delivered" not in states
            assert states.get("pending", 0) >= len(transfers)
            assert len(receiver.received()) >= 1

            def timeouts() -> int:
                row = conn.execute(
                    "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d"
                    " ON d.id = a.delivery_id WHERE d.endpoint_id = %s"
                    " AND a.error LIKE 'no answer%%'",
                    (hook["id"],),
                ).fetchone()
                return 0 if row is None else int(row[0])

            # And those attempts fail, each cut off at the 5 s deadline.
            wait_until(lambda: timeouts() >= 4, timeout=30, what="attempts time out")
            assert "delivered" not in delivery_states(conn, hook["id"])
    finally:
        receiver.stop()
    faults.audit()
