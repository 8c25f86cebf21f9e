"""Every use of waitress's internals, in one place. Checked against waitress 3.0.2.

Waitress has no stop call and no queue limit, so `settle web` drives it itself:
- `wasyncore.loop(timeout, map, use_poll, count)`: one turn of waitress's event loop, so
  the loop can stop when a stop is requested (`serve_forever` never returns);
- `server.pull_trigger()`: wakes that loop from a signal handler;
- `server.socket`, `server.handle_accept()`, `server.del_channel()` and `server.accepting =
  False`: take in the connections waiting in the listening socket's backlog, then close
  that socket, while the event loop keeps flushing the responses in flight;
- `server.task_dispatcher.queue` (requests waiting for a thread), `.active_count` (threads
  running one) and `.shutdown(cancel_pending, timeout)`: load shedding and the drain;
- `HTTPChannel.requests` and `.total_outbufs_len`: a connection with a request not yet
  answered, or a response not yet sent;
- `waitress.parser.split_uri`, replaced by `split_uri`: the same answer with a fast path for
  the usual request target (see there).

`tests/unit/test_waitress_adapter.py` runs a real waitress through this module and fails
when an upgrade changes any of them.
"""

from __future__ import annotations

import re
import select
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import waitress
import waitress.parser
from waitress import wasyncore
from waitress.channel import HTTPChannel

#: Connections `stop_accepting` takes in from the backlog at most (the backlog `settle web`
#: listens with).
BACKLOG = 1024

#: The waitress version these internals were read from.
CHECKED_VERSION = "3.0.2"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: An origin-form request target (`/path?query`) of visible ASCII without a fragment: the
#: case `split_uri` answers itself.
_PLAIN_TARGET = re.compile(rb"/(?!/)[!-\"$-~]*\Z")

_waitress_split_uri = waitress.parser.split_uri


def split_uri(uri: bytes) -> tuple[str, str, str, str, str]:
    """Waitress's `split_uri` (scheme, netloc, path, query, fragment of a request target),
    without `urllib.parse.urlsplit` for a target like `/users/7?x=1`: urlsplit was a tenth of
    a loaded web process's time. For such a target urlsplit finds no scheme, no netloc, no
    fragment and strips nothing, and splits the query at the first `?`; anything else goes
    to waitress's own function. tests/unit/test_waitress_adapter.py holds the two equal."""
    if _PLAIN_TARGET.match(uri) is None:
        result: tuple[str, str, str, str, str] = _waitress_split_uri(uri)
        return result
    path, _, query = uri.partition(b"?")
    return "", "", unquote_to_bytes(path).decode("latin-1"), query.decode("latin-1"), ""


waitress.parser.split_uri = split_uri


class WaitressServer:
    """A waitress server on an already bound, non-blocking `sock`, run one loop turn at a
    time by its owner."""

    def __init__(self, app: WSGIApp, sock: socket.socket, *, threads: int) -> None:
        self._map: dict[int, Any] = {}
        with warnings.catch_warnings():
            # Waitress 3 deprecates send_bytes but has no other way to buffer a small answer.
            warnings.filterwarnings("ignore", "send_bytes will be removed", DeprecationWarning)
            self._server: Any = waitress.create_server(
                app,
                map=self._map,
                sockets=[sock],
                threads=threads,
                ident="settle",
                clear_untrusted_proxy_headers=True,
                channel_timeout=30,
                expose_tracebacks=False,
                # Waitress sends each write at once by default (send_bytes=1): the status line
                # and headers, then the body, two syscalls and two packets per answer. Buffered,
                # a response under 16 KiB goes out in one send when its request completes;
                # larger bodies are still sent as they are written.
                send_bytes=16 * 1024,
            )

    def run_once(self, timeout: float) -> None:
        """One turn of the event loop: accept, read, write, for up to `timeout` seconds."""
        wasyncore.loop(timeout=timeout, map=self._map, use_poll=True, count=1)

    def wake(self) -> None:
        """End the current `run_once` now (safe from a signal handler or another thread)."""
        self._server.pull_trigger()

    def queue_depth(self) -> int:
        """Requests waiting for a free thread."""
        return len(self._server.task_dispatcher.queue)

    def in_flight(self) -> int:
        """Requests running or waiting for a thread."""
        dispatcher = self._server.task_dispatcher
        return int(dispatcher.active_count) + len(dispatcher.queue)

    def stop_accepting(self) -> None:
        """Accept the connections already waiting in the listening socket's backlog (they
        are served like the others), then close the socket: no new connection reaches this
        server, and with SO_REUSEPORT the kernel hands new ones to the other sockets on the
        port. Connections already accepted are still served."""
        server = self._server
        listener = server.socket
        if listener is None:
            return
        waiting = select.poll()
        waiting.register(listener, select.POLLIN)
        for _ in range(BACKLOG):  # bounded: a client connecting meanwhile must not hold us
            if not waiting.poll(0):
                break
            server.handle_accept()
        server.accepting = False
        server.del_channel()
        listener.close()
        server.socket = None

    def busy(self) -> bool:
        """Whether a request is running or waiting, or a response is not yet sent."""
        if self.in_flight():
            return True
        return any(
            isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len)
            for ch in list(self._map.values())
        )

    def shutdown(self, timeout: float) -> None:
        """Stop the worker threads, dropping requests still waiting."""
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)

    def close(self) -> None:
        """Close every connection, the wake-up pipe and this process's copy of the socket
        (a process that exits right after `shutdown` need not)."""
        wasyncore.close_all(self._map)
