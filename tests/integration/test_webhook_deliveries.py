"""Webhook deliveries against real receivers on 127.0.0.1, in the test's process: which events
become deliveries (and only once), what a delivery sends and how it is signed, what an
attempt records, the lease that makes a killed attempt come back, the backoff and the end of
retries, and the address checks at delivery time (a name that resolves to a refused address,
redirects, timeouts).

On a database of their own: the dispatcher's cursor is one per database.
"""

from __future__ import annotations

import datetime
import json
import secrets
import socket
import threading
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.events import feed
from shared.ledger.auth import SYSTEM, Principal
from shared.testing.scratch import scratch_database
from shared.webhooks import attempts, deliveries, endpoints, signing
from shared.webhooks.addresses import parse_url
from shared.webhooks.attempts import DeliveryPolicy
from shared.webhooks.deliveries import Backoff
from tests.helpers import fund, make_account, make_user, opened_pool, submit
from tests.receivers import RecordingReceiver, example_module

WINDOW = datetime.timedelta(hours=72)
ALL = list(feed.TYPES)


@pytest.fixture(scope="module")
def hooks_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_deliveries") as url:
        yield url


@pytest.fixture(scope="module")
def hooks_pool(settings: Settings, hooks_db: str) -> Iterator[ConnectionPool]:
    with opened_pool(settings.with_(database_url=hooks_db), "webhooks-test", size=2) as pool:
        yield pool


@pytest.fixture
def conn(hooks_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hooks_db, autocommit=True) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    found = RecordingReceiver()
    yield found
    found.stop()


@pytest.fixture
def policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        secret_key=settings.secret_key,
        allow_private=True,
        backoff=Backoff(first=60, cap=600, window=WINDOW),
    )


def subscribe(
    conn: psycopg.Connection,
    url: str,
    settings: Settings,
    *,
    by: Principal = SYSTEM,
    types: list[str] = ALL,
) -> dict:
    new = endpoints.NewEndpoint(parse_url(url), tuple(types))
    return dict(endpoints.create_endpoint(conn, new, by=by, secret_key=settings.secret_key))


def dispatch_all(conn: psycopg.Connection) -> list[int]:
    """Make every delivery due so far and claim the due ones, as the dispatcher does."""
    while deliveries.dispatch_batch(conn, batch=100, window=WINDOW) >= 100:
        pass
    return deliveries.claim_due(conn, batch=10_000, grace_seconds=30)


def quiet(conn: psycopg.Connection) -> None:
    """Dispatch what earlier tests left, and retire every endpoint they made."""
    dispatch_all(conn)
    conn.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL")
    conn.execute("UPDATE webhook_deliveries SET status = 'cancelled' WHERE status = 'pending'")


def events_of(conn: psycopg.Connection, transfer_ids: list[int]) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT id, type FROM transfer_events WHERE transfer_id = ANY(%s) ORDER BY id",
            (transfer_ids,),
        ).fetchall()
    ]


def delivered_pairs(conn: psycopg.Connection) -> list[tuple[int, int]]:
    return [
        (int(r[0]), int(r[1]))
        for r in conn.execute(
            "SELECT endpoint_id, event_id FROM webhook_deliveries ORDER BY 1, 2"
        ).fetchall()
    ]


def test_each_event_becomes_one_delivery_per_matching_endpoint_and_only_once(
    conn: psycopg.Connection, settings: Settings
) -> None:
    quiet(conn)
    alice, bob = make_user(conn), make_user(conn)
    treasury = make_account(conn, treasury=True)
    a1, b1 = make_account(conn, user_id=alice), make_account(conn, user_id=bob)
    operator_hook = subscribe(conn, "http://127.0.0.1:9/all", settings)
    alice_hook = subscribe(conn, "http://127.0.0.1:9/a", settings, by=Principal(user_id=alice))
    bob_settled = subscribe(
        conn,
        "http://127.0.0.1:9/b",
        settings,
        by=Principal(user_id=bob),
        types=["transfer.settled"],
    )
    gone = subscribe(conn, "http://127.0.0.1:9/gone", settings)
    endpoints.delete_endpoint(conn, gone["id"], by=SYSTEM)

    to_alice = fund(conn, treasury, a1, 500)  # accepted + settled, alice's
    alice_to_bob = fund(conn, a1, b1, 100)  # accepted + settled, both users'
    dispatch_all(conn)
    later = subscribe(conn, "http://127.0.0.1:9/later", settings)  # made after those events

    made = set(delivered_pairs(conn))
    expected: set[tuple[int, int]] = set()
    for event_id, _ in events_of(conn, [to_alice, alice_to_bob]):
        expected.add((operator_hook["id"], event_id))
        expected.add((alice_hook["id"], event_id))
    for event_id, kind in events_of(conn, [alice_to_bob]):
        if kind == "transfer.settled":
            expected.add((bob_settled["id"], event_id))
    assert made == expected
    assert not any(pair[0] in (gone["id"], later["id"]) for pair in made)

    # Dispatching again makes nothing new, and the cursor stands at the horizon.
    dispatch_all(conn)
    assert set(delivered_pairs(conn)) == expected
    mark = conn.execute("SELECT dispatched_through FROM webhook_dispatch_cursor").fetchone()
    assert mark is not None and mark[0] == feed.horizon(conn)


def test_a_full_batch_stops_at_its_last_event_and_the_next_goes_on_from_there(
    conn: psycopg.Connection, settings: Settings
) -> None:
    quiet(conn)
    hook = subscribe(conn, "http://127.0.0.1:9/all", settings)
    treasury, account = make_account(conn, treasury=True), make_account(conn)
    ids = [fund(conn, treasury, account, 10) for _ in range(3)]  # six events
    assert deliveries.dispatch_batch(conn, batch=4, window=WINDOW) == 4
    assert deliveries.dispatch_batch(conn, batch=4, window=WINDOW) == 2
    made = conn.execute(
        "SELECT event_id FROM webhook_deliveries WHERE endpoint_id = %s ORDER BY 1", (hook["id"],)
    ).fetchall()
    assert [r[0] for r in made] == [e for e, _ in events_of(conn, ids)]


def _one_delivery(
    conn: psycopg.Connection, url: str, settings: Settings, **kind: object
) -> tuple[dict, int, int]:
    """An endpoint at `url`, a transfer settled, and its settled event's delivery, claimed
    as the dispatcher does: (endpoint, transfer id, delivery id)."""
    quiet(conn)
    hook = subscribe(conn, url, settings, types=["transfer.settled"])
    transfer = fund(conn, make_account(conn, treasury=True), make_account(conn), 250)
    due = dispatch_all(conn)
    assert len(due) == 1
    return hook, transfer, due[0]


def test_a_delivery_posts_the_event_as_get_events_shows_it_signed_with_the_endpoints_secret(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    hook, transfer, delivery = _one_delivery(conn, receiver.url, settings)
    assert attempts.deliver(hooks_pool, delivery, policy) == "delivered"
    [request] = receiver.received()
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    event = request.event
    page = feed.read_page(conn, feed.EventQuery(limit=1000), by=SYSTEM, retention_days=30)
    [listed] = [e for e in page.items if e["id"] == event["id"]]
    assert event == json.loads(orjson.dumps(listed))  # as the API writes it
    assert event["type"] == "transfer.settled" and event["data"]["id"] == transfer
    assert request.headers["settle-event-id"] == str(event["id"])

    header = request.headers["settle-signature"]
    assert header.count("v1=") == 1
    assert signing.verify(header, request.body, hook["secret"]) is not None
    assert example_module().verify(header, request.body, [hook["secret"]])
    tampered = request.body.replace(b'"amount":250', b'"amount":999')
    assert tampered != request.body
    assert signing.verify(header, tampered, hook["secret"]) is None
    assert not example_module().verify(header, tampered, [hook["secret"]])
    assert not example_module().verify(header, request.body, ["whsec_" + "x" * 43])

    row = conn.execute(
        "SELECT status, attempts, last_status_code, finished_at IS NOT NULL"
        " FROM webhook_deliveries WHERE id = %s",
        (delivery,),
    ).fetchone()
    assert row == ("delivered", 1, 200, True)
    tried = conn.execute(
        "SELECT status_code, latency_ms >= 0, error FROM webhook_attempts WHERE delivery_id = %s",
        (delivery,),
    ).fetchall()
    assert tried == [(200, True, None)]
    # Sent again (a duplicate message), a delivered delivery makes no second request.
    assert attempts.deliver(hooks_pool, delivery, policy) is None
    assert len(receiver.received()) == 1


def test_a_failed_attempt_is_recorded_and_retried_after_a_backoff_then_given_up(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    receiver.status = 500
    _, _, delivery = _one_delivery(conn, receiver.url, settings)
    assert attempts.deliver(hooks_pool, delivery, policy) == "pending"
    row = conn.execute(
        "SELECT attempts, last_status_code, last_error, next_attempt_at - now()"
        " FROM webhook_deliveries WHERE id = %s",
        (delivery,),
    ).fetchone()
    assert row is not None
    assert row[:3] == (1, 500, "answered 500")
    # The first backoff (60 s here) with its jitter: between its half and itself.
    assert datetime.timedelta(seconds=29) <= row[3] <= datetime.timedelta(seconds=60)
    # Not due yet: a message for it does nothing, and the dispatcher does not send it.
    assert attempts.deliver(hooks_pool, delivery, policy) is None
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == []
    assert len(receiver.received()) == 1

    # Due again, and past its retry window: the next failure gives up.
    conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now(), retry_until = now() WHERE id = %s",
        (delivery,),
    )
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == [delivery]
    assert attempts.deliver(hooks_pool, delivery, policy) == "failed"
    tried = conn.execute(
        "SELECT status_code, error FROM webhook_attempts WHERE delivery_id = %s ORDER BY id",
        (delivery,),
    ).fetchall()
    assert tried == [(500, "answered 500"), (500, "answered 500")]
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == []


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(first=30, cap=3600, window=WINDOW)
    assert [backoff.delay(n, lambda: 1.0) for n in (1, 2, 3, 8)] == [30, 60, 120, 3600]
    assert [backoff.delay(n, lambda: 0.0) for n in (1, 2)] == [15, 30]
    assert backoff.delay(500, lambda: 1.0) == 3600


def test_a_claimed_delivery_is_held_for_its_lease_and_falls_due_again_after_it(
    conn: psycopg.Connection, settings: Settings, hooks_pool: ConnectionPool
) -> None:
    _, _, delivery = _one_delivery(conn, "http://127.0.0.1:9/hook", settings)
    attempt = deliveries.claim(conn, delivery)
    assert attempt is not None and attempt.delivery_id == delivery
    # Its worker is killed now: nothing records an outcome. Another message does nothing
    # while the lease lasts, and the dispatcher does not send it again.
    assert deliveries.claim(conn, delivery) is None
    assert deliveries.claim_due(conn, batch=10, grace_seconds=0) == []
    lease = conn.execute(
        "SELECT next_attempt_at - now(), enqueued_at FROM webhook_deliveries WHERE id = %s",
        (delivery,),
    ).fetchone()
    assert lease is not None
    assert deliveries.LEASE - datetime.timedelta(seconds=2) < lease[0] <= deliveries.LEASE
    assert lease[1] is None  # consumed: the dispatcher sends it again as soon as it is due
    conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() - interval '1 second' WHERE id = %s",
        (delivery,),
    )
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == [delivery]


def test_a_message_sent_but_never_consumed_is_sent_again_after_the_grace_period(
    conn: psycopg.Connection, settings: Settings
) -> None:
    _, _, delivery = _one_delivery(conn, "http://127.0.0.1:9/hook", settings)
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == []
    conn.execute(
        "UPDATE webhook_deliveries SET enqueued_at = now() - interval '31 seconds' WHERE id = %s",
        (delivery,),
    )
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == [delivery]
    deliveries.unclaim(conn, [delivery])  # its send failed
    assert deliveries.claim_due(conn, batch=10, grace_seconds=30) == [delivery]


def test_a_delivery_to_a_deleted_endpoint_is_cancelled_when_claimed(
    conn: psycopg.Connection, settings: Settings, hooks_pool: ConnectionPool
) -> None:
    hook, _, delivery = _one_delivery(conn, "http://127.0.0.1:9/hook", settings)
    conn.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = %s", (hook["id"],))
    assert deliveries.claim(conn, delivery) is None
    row = conn.execute(
        "SELECT status FROM webhook_deliveries WHERE id = %s", (delivery,)
    ).fetchone()
    assert row == ("cancelled",)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_private_address_is_refused_at_delivery_time_and_nothing_is_sent(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
    host: str,
) -> None:
    """The endpoint was accepted (private addresses allowed then, or a name that resolved
    elsewhere: DNS rebinding); at delivery time the address is checked again."""
    url = f"http://{host}:{receiver.port}/hook"
    _, _, delivery = _one_delivery(conn, url, settings)
    strict = DeliveryPolicy(
        secret_key=policy.secret_key, allow_private=False, backoff=policy.backoff
    )
    assert attempts.deliver(hooks_pool, delivery, strict) == "pending"
    assert receiver.received() == []
    row = conn.execute(
        "SELECT status_code, error FROM webhook_attempts WHERE delivery_id = %s", (delivery,)
    ).fetchone()
    assert row is not None and row[0] is None
    assert "loopback" in row[1] and row[1].startswith("not sent:")


def test_a_name_is_resolved_once_and_sent_as_the_host_header(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    _, _, delivery = _one_delivery(conn, f"http://localhost:{receiver.port}/hook?x=1", settings)
    assert attempts.deliver(hooks_pool, delivery, policy) == "delivered"
    [request] = receiver.received()
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.path == "/hook?x=1"


def test_a_redirect_is_not_followed(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    elsewhere = RecordingReceiver()
    try:
        receiver.status, receiver.location = 307, elsewhere.url
        _, _, delivery = _one_delivery(conn, receiver.url, settings)
        assert attempts.deliver(hooks_pool, delivery, policy) == "pending"
        assert len(receiver.received()) == 1 and elsewhere.received() == []
        row = conn.execute(
            "SELECT last_status_code, last_error FROM webhook_deliveries WHERE id = %s",
            (delivery,),
        ).fetchone()
        assert row == (307, "answered 307 (redirects are not followed)")
    finally:
        elsewhere.stop()


def test_a_receiver_that_does_not_answer_in_time_is_cut_off(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    receiver.delay = 3.0
    _, _, delivery = _one_delivery(conn, receiver.url, settings)
    short = DeliveryPolicy(
        secret_key=policy.secret_key, allow_private=True, backoff=policy.backoff, timeout=0.5
    )
    assert attempts.deliver(hooks_pool, delivery, short) == "pending"
    row = conn.execute(
        "SELECT status_code, error FROM webhook_attempts WHERE delivery_id = %s", (delivery,)
    ).fetchone()
    assert row == (None, "no answer within 0.5s")


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(
    conn: psycopg.Connection, settings: Settings, hooks_pool: ConnectionPool, policy: DeliveryPolicy
) -> None:
    """Each byte comes before a read timeout would fire; the deadline holds all the same."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def trickle() -> None:
        client, _ = listener.accept()
        with client:
            client.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                if done.wait(0.1):
                    return
                client.sendall(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        _, _, delivery = _one_delivery(conn, f"http://127.0.0.1:{port}/hook", settings)
        short = DeliveryPolicy(
            secret_key=policy.secret_key, allow_private=True, backoff=policy.backoff, timeout=1.0
        )
        assert attempts.deliver(hooks_pool, delivery, short) == "pending"
        row = conn.execute(
            "SELECT status_code, error FROM webhook_attempts WHERE delivery_id = %s", (delivery,)
        ).fetchone()
        assert row == (None, "no answer within 1s")
    finally:
        done.set()
        listener.close()
        thread.join(timeout=5)


def test_without_secret_key_nothing_is_sent_and_the_delivery_waits(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    _, _, delivery = _one_delivery(conn, receiver.url, settings)
    unkeyed = DeliveryPolicy(secret_key=None, allow_private=True, backoff=policy.backoff)
    assert attempts.deliver(hooks_pool, delivery, unkeyed) == "pending"
    other = DeliveryPolicy(
        secret_key=secrets.token_urlsafe(32), allow_private=True, backoff=policy.backoff
    )
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (delivery,))
    assert attempts.deliver(hooks_pool, delivery, other) == "pending"
    assert receiver.received() == []
    errors = conn.execute(
        "SELECT error FROM webhook_attempts WHERE delivery_id = %s ORDER BY id", (delivery,)
    ).fetchall()
    assert "SECRET_KEY, which is not set" in errors[0][0]
    assert "SECRET_KEY is not the key" in errors[1][0]


def test_after_a_rotation_deliveries_carry_a_signature_by_each_secret(
    conn: psycopg.Connection,
    settings: Settings,
    hooks_pool: ConnectionPool,
    receiver: RecordingReceiver,
    policy: DeliveryPolicy,
) -> None:
    hook, _, delivery = _one_delivery(conn, receiver.url, settings)
    rotated = endpoints.rotate_secret(conn, hook["id"], by=SYSTEM, secret_key=settings.secret_key)
    assert attempts.deliver(hooks_pool, delivery, policy) == "delivered"
    [request] = receiver.received()
    header = request.headers["settle-signature"]
    assert header.count("v1=") == 2
    verify = example_module().verify
    assert verify(header, request.body, [hook["secret"]])  # a receiver not yet switched
    assert verify(header, request.body, [rotated["secret"]])  # one already switched

    # Once the overlap is over, only the new secret signs.
    conn.execute(
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() WHERE id = %s",
        (hook["id"],),
    )
    transfer = fund(conn, make_account(conn, treasury=True), make_account(conn), 5)
    assert transfer
    [later] = dispatch_all(conn)
    assert attempts.deliver(hooks_pool, later, policy) == "delivered"
    header = receiver.received()[-1].headers["settle-signature"]
    assert header.count("v1=") == 1
    assert verify(header, receiver.received()[-1].body, [rotated["secret"]])
    assert not verify(header, receiver.received()[-1].body, [hook["secret"]])


def test_a_pending_transfer_makes_only_its_accepted_event(
    conn: psycopg.Connection, settings: Settings
) -> None:
    quiet(conn)
    hook = subscribe(conn, "http://127.0.0.1:9/hook", settings)
    transfer = submit(conn, make_account(conn, treasury=True), make_account(conn), 5)
    dispatch_all(conn)
    types = conn.execute(
        "SELECT event_type FROM webhook_deliveries WHERE endpoint_id = %s", (hook["id"],)
    ).fetchall()
    assert types == [("transfer.accepted",)]
    assert transfer
