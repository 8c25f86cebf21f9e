"""A small HTTP client for the end-to-end tests: one keep-alive connection per thread, JSON
in and out, an API key on every request, and the retry policy the API asks of its clients."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

#: Longest Retry-After the client honours; a longer one would outlast the test anyway.
MAX_RETRY_AFTER = 5.0


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (connection refused, reset, timed out)
    body: Any
    tries: int = 1


_operator_key: list[str] = []
_operator_key_lock = threading.Lock()


def operator_key() -> str:
    """An operator API key in the test database (DATABASE_URL, which the suite's conftest
    exported), made on first use and shared by every client of the session."""
    with _operator_key_lock:
        if not _operator_key:
            import psycopg

            from shared.ledger import auth

            with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
                _operator_key.append(auth.create_key(conn, user_id=None, label="e2e").key)
        return _operator_key[0]


class Client:
    """HTTP/1.1 to `host`:`port` (default 127.0.0.1), safe to share between threads; a
    context manager that closes every thread's connection on exit. Requests carry `key` as
    their bearer token (default: the session's operator key)."""

    def __init__(
        self, port: int, *, timeout: float = 10.0, key: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._authorization = f"Bearer {key or operator_key()}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[http.client.HTTPConnection] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int | None, dict[str, str], Any]:
        """One attempt: (status, headers, decoded JSON body), or (None, {}, error) when the
        connection failed."""
        payload = None if body is None else json.dumps(body).encode()
        sent = {
            "Content-Type": "application/json",
            "Authorization": self._authorization,
            **(headers or {}),
        }
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=sent)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            return None, {}, f"{type(exc).__name__}: {exc}"
        if resp.getheader("Connection", "").lower() == "close":
            self._drop_connection()
        answer_headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, answer_headers, json.loads(raw) if raw else None

    def submit_transfer(
        self,
        source: int,
        target: int,
        amount: int,
        key: str,
        *,
        deadline: float,
        give_up: threading.Event | None = None,
    ) -> Answer:
        """POST /transfers, retried with the same Idempotency-Key after a 503 (waiting its
        Retry-After) or a connection failure, until `deadline` (time.monotonic) passes or
        `give_up` is set."""
        body = {"from_account_id": source, "to_account_id": target, "amount": amount}
        tries = 0
        pause = threading.Event()
        while True:
            tries += 1
            status, headers, answer = self.request(
                "POST", "/transfers", body, {"Idempotency-Key": key}
            )
            if status is not None and status != 503:
                return Answer(status, answer, tries)
            stopped = give_up is not None and give_up.is_set()
            if stopped or time.monotonic() >= deadline:
                return Answer(status, answer, tries)
            wait = 0.05
            if status == 503:
                wait = min(float(headers.get("retry-after", "1")), MAX_RETRY_AFTER)
            (give_up or pause).wait(wait)
