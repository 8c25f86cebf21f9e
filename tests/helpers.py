"""Small builders for test data: each makes real rows through the real use cases."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.broker.messages import TRANSFER_QUEUE, decode, transfer_ids
from shared.config import Settings
from shared.db.pool import create_pool
from shared.ledger import operations as ledger
from shared.ledger.auth import SYSTEM
from shared.ledger.commands import NewAccount, NewTransfer, NewUser

T = TypeVar("T")


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def make_user(conn: psycopg.Connection, name: str = "Test User") -> int:
    new = NewUser(email=unique_email(), name=name)
    return int(ledger.create_user(conn, new, by=SYSTEM)["id"])


def make_account(
    conn: psycopg.Connection,
    *,
    currency: str = "EUR",
    treasury: bool = False,
    user_id: int | None = None,
) -> int:
    owner = user_id if user_id is not None else make_user(conn)
    new = NewAccount(user_id=owner, currency=currency, allow_negative_balance=treasury)
    return int(ledger.create_account(conn, new, by=SYSTEM)["id"])


def fund(conn: psycopg.Connection, treasury: int, account: int, amount: int) -> int:
    """Move `amount` from `treasury` to `account` and settle it now; returns the transfer id."""
    transfer = submit(conn, treasury, account, amount)
    status, _ = ledger.settle_transfer(conn, transfer)
    assert status == "settled"
    return transfer


def submit(conn: psycopg.Connection, source: int, target: int, amount: int) -> int:
    """Record a pending transfer (no message is sent); returns its id."""
    new = NewTransfer(
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        currency=None,
        idempotency_key=uuid.uuid4().hex,
    )
    return int(ledger.submit_transfer(conn, new, by=SYSTEM)["id"])


def balance(conn: psycopg.Connection, account: int) -> int:
    row = conn.execute("SELECT balance FROM accounts WHERE id = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])


# --- Worker-side helpers (settle actor, sweeper, end-to-end) ---------------------------------
# Imports are local to each helper so that this section stays an append to the module.


def wait_until(
    condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `condition()` until it returns something truthy (returned), or raise
    AssertionError naming `what` after `timeout` seconds. Tests wait on conditions, never
    for a fixed time."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}")
        pause.wait(interval)


def running_worker(broker, *, threads: int = 2):
    """A context manager running an in-process dramatiq Worker on `broker`. Starting it fires
    the LendConnections middleware's before_worker_boot (which opens the pool); leaving it stops
    the worker threads, which closes the pool."""
    import contextlib

    import dramatiq

    @contextlib.contextmanager
    def run():
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()
            # Worker.start registers a middleware that points back at this worker (to add
            # consumers for queues declared later); a stopped worker must not linger there.
            broker.middleware[:] = [
                m for m in broker.middleware if getattr(m, "worker", None) is not worker
            ]

    return run()


def join_queue(broker, queue: str = TRANSFER_QUEUE, *, timeout: float = 30.0) -> None:
    """Wait until `queue` (including its delay queue and messages in flight) is empty.

    On RabbitMQ, dramatiq's own `join` counts only the messages waiting, not those a worker
    holds unacknowledged (a retry waiting out its backoff, say), so once that count is zero
    it asks `rabbitmqctl`, whose count includes them (a message moves to the delay queue,
    or back, before it is acknowledged, so a zero there means done)."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    if not isinstance(broker, RabbitmqBroker):
        broker.join(queue, timeout=int(timeout * 1000))
        return
    vhost = broker.parameters.virtual_host
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue} on vhost {vhost} not drained within {timeout}s")
        depths = broker.depths(queue)
        if depths["ready"] + depths["delayed"] == 0 and rabbitmq_backlog(vhost, queue) == 0:
            return
        time.sleep(0.1)


def rabbitmq_backlog(vhost: str, queue: str = TRANSFER_QUEUE) -> int:
    """Messages in `queue` and its delay queue on `vhost`, waiting or held unacknowledged by a
    consumer (`rabbitmqctl list_queues`, which asks the queues themselves)."""
    import subprocess

    from dramatiq.common import dq_name

    done = subprocess.run(
        [
            "rabbitmqctl",
            "--quiet",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    return sum(int(counts.get(name, 0)) for name in (queue, dq_name(queue)))


def queued_transfer_ids(broker, queue: str = TRANSFER_QUEUE) -> list[int]:
    """Transfer ids of the messages waiting in `queue` (not yet consumed). On RabbitMQ they
    are taken unacknowledged on a channel of their own, which then gives them back."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    bodies: list[bytes] = []
    if not isinstance(broker, RabbitmqBroker):
        bodies = list(broker.client.hvals(f"{broker.namespace}:{queue}.msgs"))
    else:
        import pika

        connection = pika.BlockingConnection(broker.parameters)
        try:
            channel = connection.channel()
            while True:
                method, _, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                bodies.append(body)
        finally:
            connection.close()  # every message taken goes back
    return sorted(tid for body in bodies for tid in transfer_ids(decode(body)))


def transfer_row(conn: psycopg.Connection, transfer_id: int) -> dict[str, object]:
    """Every column of one transfer, including the internal ones the API does not show."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM transfers WHERE id = %s", (transfer_id,))
        row = cur.fetchone()
    assert row is not None, f"transfer {transfer_id} does not exist"
    return row


def entry_amounts(conn: psycopg.Connection, transfer_id: int) -> list[tuple[int, int]]:
    """(account_id, signed amount) of a transfer's ledger entries, debit first."""
    rows = conn.execute(
        "SELECT account_id, amount FROM entries WHERE transfer_id = %s ORDER BY amount",
        (transfer_id,),
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


TABLES = ("users", "accounts", "transfers", "entries")


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in each table of the ledger, to show that a refused request changed nothing."""
    counts: dict[str, int] = {}
    for table in TABLES:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


def new_key() -> str:
    """A fresh Idempotency-Key."""
    return uuid.uuid4().hex


def entry_ids(conn: psycopg.Connection, account: int) -> list[int]:
    """Ids of the account's ledger entries, oldest first."""
    rows = conn.execute(
        "SELECT id FROM entries WHERE account_id = %s ORDER BY id", (account,)
    ).fetchall()
    return [int(row[0]) for row in rows]


class CountingInput:
    """A WSGI input stream over `data` that counts the bytes the app has read from it."""

    def __init__(self, data: bytes) -> None:
        import io

        self._stream = io.BytesIO(data)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        line = self._stream.readline(size)
        self.bytes_read += len(line)
        return line


def raw_post(
    client, path: str, stream: object, length: int | None, headers: dict[str, str]
) -> tuple[str, dict[str, object]]:
    """POST straight to the WSGI app with `stream` as its input: with Content-Length `length`,
    or (None) with none and an input that ends at EOF, as a server passes a chunked body.
    Returns the status line and the decoded JSON answer."""
    import json

    import falcon.testing

    environ = falcon.testing.create_environ(method="POST", path=path, headers=headers)
    environ["wsgi.input"] = stream
    if length is None:
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(length)
    start_response = falcon.testing.StartResponseMock()
    body = b"".join(client.app(environ, start_response))
    return start_response.status, json.loads(body)


@contextlib.contextmanager
def opened_pool(
    settings: Settings, role: str, *, size: int, timeout: float | None = None
) -> Iterator[ConnectionPool]:
    """A pool of `size` connections on `settings.database_url`, opened as a process opens
    its own (waiting for every connection), and closed on exit."""
    pool = create_pool(settings, role, size=size, timeout=timeout)
    pool.open(wait=True, timeout=10)
    try:
        yield pool
    finally:
        pool.close()
