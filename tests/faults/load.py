"""Load for the fault tests: transfers submitted over HTTP from several threads, the way a
careful client does it (same Idempotency-Key until an answer, Retry-After honoured), with
every answer counted so that a test can tell what the service said while it was hurt; and a
sampler of `/healthz` and `/readyz` meanwhile."""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
from collections.abc import Iterable

import psycopg

from tests.e2e.api import Client
from tests.e2e.processes import http_status
from tests.helpers import fund, make_account

#: Longest pause between two tries of one transfer.
MAX_PAUSE = 1.0


def accounts_with_money(
    conn: psycopg.Connection, count: int, balance: int
) -> tuple[int, list[int]]:
    """A treasury and `count` accounts holding `balance` each."""
    treasury = make_account(conn, treasury=True)
    accounts = [make_account(conn) for _ in range(count)]
    for account in accounts:
        fund(conn, treasury, account, balance)
    return treasury, accounts


def random_plan(accounts: list[int], count: int, seed: int) -> list[tuple[int, int, int]]:
    """`count` transfers between random pairs; some overdraw as money moves."""
    rng = random.Random(seed)
    return [(*rng.sample(accounts, 2), rng.randint(100, 3_000)) for _ in range(count)]


class Load:
    """Submits `plan` from `threads` threads until every transfer is accepted, `stop()` is
    called, or `deadline` seconds pass. `statuses` counts every answer (None: no answer);
    `accepted` maps each accepted Idempotency-Key to its transfer id; `unexpected` keeps the
    answers that are neither 202 nor 503."""

    def __init__(
        self,
        port: int,
        plan: Iterable[tuple[int, int, int]],
        *,
        api_key: str,
        threads: int = 16,
        deadline: float = 120.0,
        host: str = "127.0.0.1",
    ) -> None:
        self._client = Client(port, host=host)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._todo = collections.deque((uuid.uuid4().hex, *t) for t in plan)
        self._total = len(self._todo)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + deadline
        self.statuses: collections.Counter[int | None] = collections.Counter()
        self.accepted: dict[str, int] = {}
        self.unexpected: list[tuple[int | None, object]] = []
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Wait until every thread is done (every transfer accepted, or stopped)."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        self._client.close()
        assert not alive, f"load threads still running after {timeout}s: {alive}"

    def count(self, status: int | None) -> int:
        with self._lock:
            return self.statuses[status]

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.accepted)

    @property
    def complete(self) -> bool:
        with self._lock:
            return len(self.accepted) == self._total

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self.accepted.values())

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if not self._todo:
                    return
                key, source, target, amount = self._todo.popleft()
            self._submit(key, source, target, amount)

    def _submit(self, key: str, source: int, target: int, amount: int) -> None:
        body = {"from_account_id": source, "to_account_id": target, "amount": amount}
        headers = {**self._headers, "Idempotency-Key": key}
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            status, answer_headers, answer = self._client.request(
                "POST", "/transfers", body, headers
            )
            with self._lock:
                self.statuses[status] += 1
                if status == 202:
                    self.accepted[key] = int(answer["data"]["id"])
                    return
                if status not in (503, None):
                    self.unexpected.append((status, answer))
                    return
            pause = 0.05
            if status == 503:
                pause = min(float(answer_headers.get("retry-after", "1")), MAX_PAUSE)
            self._stop.wait(pause)


class HealthSampler:
    """GET /healthz and GET /readyz every `interval` seconds from a thread, recording each
    status."""

    def __init__(self, port: int, interval: float = 0.5) -> None:
        self._port = port
        self._interval = interval
        self._stop = threading.Event()
        self.statuses: list[int | None] = []
        self.ready: list[int | None] = []
        self._thread = threading.Thread(target=self._run, name="healthz", daemon=True)

    def start(self) -> HealthSampler:
        self._thread.start()
        return self

    def stop(self) -> list[int | None]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.statuses

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.append(http_status(self._port, "/healthz", timeout=5))
            self.ready.append(http_status(self._port, "/readyz", timeout=5))
            self._stop.wait(self._interval)
