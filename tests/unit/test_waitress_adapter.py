"""The waitress internals web/waitress_adapter.py relies on, and the load shedding built on
them (WEB_QUEUE_LIMIT), on a real waitress server: an upgrade of waitress that renames what
the adapter reads fails here."""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from web.server import shed_load
from web.waitress_adapter import CHECKED_VERSION, WaitressServer

LIMIT = 1


def test_the_installed_waitress_is_the_release_the_adapter_was_checked_against() -> None:
    installed = importlib.metadata.version("waitress")
    assert installed == CHECKED_VERSION, (
        f"waitress {installed} is installed; web/waitress_adapter.py was checked against"
        f" {CHECKED_VERSION}: re-read its use of wasyncore, task_dispatcher and HTTPChannel"
    )


class Served:
    """A real waitress server with one thread whose requests wait at `gate`, shedding load
    beyond `LIMIT` waiting requests, its event loop turning in a thread."""

    def __init__(self, *, loop: bool = True) -> None:
        self.gate = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.server = WaitressServer(
            shed_load(self._waits, lambda: self.server.queue_depth(), LIMIT), self.sock, threads=1
        )
        self._done = threading.Event()
        self._stopping = threading.Event()
        self._stopped_accepting = threading.Event()
        self._loop = threading.Thread(target=self._run, daemon=True)
        if loop:
            self._loop.start()

    def _waits(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        self.gate.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def _run(self) -> None:
        while not self._done.is_set():
            # On the loop's own thread, as `settle web` does: it changes the loop's map.
            if self._stopping.is_set() and not self._stopped_accepting.is_set():
                self.server.stop_accepting()
                self._stopped_accepting.set()
            self.server.run_once(timeout=0.05)

    def close(self) -> None:
        self.gate.set()
        if self._loop.is_alive():
            self._stopping.set()
            self.server.wake()
            wait_until(
                lambda: self._stopped_accepting.is_set() and not self.server.busy(),
                timeout=10,
                what="the server is idle",
            )
        else:
            self.server.stop_accepting()
        self._done.set()
        if self._loop.is_alive():
            self._loop.join(timeout=10)
        self.server.shutdown(timeout=5)
        self.server.close()
        self.sock.close()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def get(port: int, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        answers.append((response.status, dict(response.getheaders()), response.read()))
    finally:
        conn.close()


def test_requests_beyond_the_queue_limit_are_answered_503_overloaded_with_retry_after(
    served: Served,
) -> None:
    answers: list[tuple[int, dict[str, str], bytes]] = []
    clients = [threading.Thread(target=get, args=(served.port, answers)) for _ in range(4)]
    clients[0].start()
    wait_until(lambda: served.server.in_flight() == 1, timeout=10, what="one request runs")
    for queued, client in enumerate(clients[1:], start=1):
        client.start()
        wait_until(
            lambda n=queued: served.server.queue_depth() == n,
            timeout=10,
            what=f"{queued} request(s) wait for the thread",
        )
    assert served.server.in_flight() == 4 and served.server.busy()

    served.gate.set()
    for client in clients:
        client.join(timeout=30)

    # The thread takes the waiting requests in order: the first sees two more behind it
    # (over the limit of 1) and is turned away; the next two are served.
    assert sorted(status for status, _, _ in answers) == [200, 200, 200, 503]
    [(_, headers, body)] = [a for a in answers if a[0] == 503]
    assert headers["Retry-After"] == "1"
    assert json.loads(body)["error"]["code"] == "overloaded"


def test_a_wake_ends_the_turn_of_the_event_loop() -> None:
    quiet = Served(loop=False)  # nothing else turns its loop
    turn = threading.Thread(target=quiet.server.run_once, kwargs={"timeout": 60})
    turn.start()
    quiet.server.wake()
    turn.join(timeout=30)
    alive = turn.is_alive()
    quiet.close()
    assert not alive


def test_stopping_serves_the_connections_waiting_in_the_backlog_and_closes_the_socket() -> None:
    quiet = Served(loop=False)  # nothing turns its loop: a connection waits in the backlog
    quiet.gate.set()
    waiting = socket.create_connection(("127.0.0.1", quiet.port), timeout=10)
    try:
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: settle\r\nConnection: close\r\n\r\n")
        quiet.server.stop_accepting()
        # The socket is closed: nothing listens on the port any more.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", quiet.port), timeout=10).close()
        answer = bytearray()
        waiting.setblocking(False)

        def answered() -> bool:
            quiet.server.run_once(timeout=0.05)
            with contextlib.suppress(BlockingIOError):  # nothing to read yet
                answer.extend(waiting.recv(4096))
            return answer.endswith(b"ok")

        wait_until(answered, timeout=10, what="the waiting connection is answered")
        assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        waiting.close()
        quiet.close()


SPLIT_EXAMPLES = [
    b"/",
    b"/users/7",
    b"/users/7?x=1&y=%20",
    b"/a%2Fb/%C3%A9?q=%41",
    b"/p??q",
    b"/p?",
    b"/p#frag",
    b"/p?q#frag",
    b"//host/p?q",
    b"http://example.com/p?q",
    b"*",
    b"/p q",
    b"/p\tq",
    b"/p\x7f",
    b"/\xc3\xa9",
    b"",
    b"users",
]


@pytest.mark.parametrize("uri", SPLIT_EXAMPLES)
def test_the_fast_split_uri_answers_as_waitress_does(uri: bytes) -> None:
    from waitress import parser

    from web import waitress_adapter

    assert parser.split_uri is waitress_adapter.split_uri  # installed where waitress calls it
    try:
        expected: object = waitress_adapter._waitress_split_uri(uri)
    except parser.ParsingError as exc:
        expected = type(exc)
    try:
        got: object = waitress_adapter.split_uri(uri)
    except parser.ParsingError as exc:
        got = type(exc)
    assert got == expected


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=40).map(str.encode),
    ).map(lambda b: b"/" + b)
)
def test_the_fast_split_uri_answers_as_waitress_does_for_any_target(uri: bytes) -> None:
    from web import waitress_adapter

    try:
        expected: object = waitress_adapter._waitress_split_uri(uri)
    except Exception as exc:
        expected = type(exc)
    try:
        got: object = waitress_adapter.split_uri(uri)
    except Exception as exc:
        got = type(exc)
    assert got == expected
