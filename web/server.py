"""`settle web`: the waitress launcher, the composition root of the web processes.

The parent binds one listening socket and forks WEB_PROCESSES children that share it; each
child opens its own pool after the fork and serves with WEB_THREADS threads. Waitress has no
signal handling of its own, so each child drives waitress's event loop itself: on SIGTERM it
stops accepting, lets in-flight requests finish and their responses flush, closes its pool
and exits 0. The parent passes SIGTERM on and restarts a child that dies on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, NoReturn

import waitress
from psycopg_pool import PoolTimeout
from waitress import wasyncore
from waitress.channel import HTTPChannel

from shared.db.budget import Plan
from shared.db.leases import LeaseKeeper
from shared.db.pool import create_pool
from shared.errors import Overloaded
from shared.runtime import multiproc
from shared.runtime.lifecycle import boot_check, configure_logging, load_settings, plan_or_exit
from shared.runtime.settings import Settings

log = logging.getLogger("settle.web")

#: The signals that ask a process to stop: SIGTERM from honcho or a supervisor, SIGINT from a
#: terminal.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StopRequest:
    """Set from a signal handler; once the event loop runs, setting it also wakes the loop,
    so that the drain starts now rather than at the loop's next timeout."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.wake: Callable[[], None] | None = None

    def set(self) -> None:
        self._event.set()
        if self.wake is not None:
            self.wake()

    def is_set(self) -> bool:
        return self._event.is_set()


#: Give up (stop everything, exit 1) when web processes die this often within `CRASH_WINDOW`
#: seconds, rather than restart a process that cannot run, forever.
MAX_CRASHES = 5
CRASH_WINDOW = 60.0


def shed_load(app: WSGIApp, queue_depth: Callable[[], int], limit: int) -> WSGIApp:
    """Answer 503 + Retry-After at once while more than `limit` requests wait for a thread.

    Waitress's task queue is unbounded; without this a burst would queue without limit and
    every request would time out instead of a few being turned away quickly.
    """
    body = (
        b'{"error":{"code":"%s","message":"the server is overloaded; retry"}}'
        % Overloaded.code.encode()
    )

    def shedding(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if queue_depth() > limit:
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Retry-After", str(Overloaded.retry_after)),
                    ("X-Request-Id", uuid.uuid4().hex),
                ],
            )
            return [body]
        return app(environ, start_response)

    return shedding


def listen(settings: Settings) -> socket.socket:
    sock = socket.create_server((settings.host, settings.port), backlog=1024, reuse_port=False)
    sock.setblocking(False)
    return sock


def serve(settings: Settings, sock: socket.socket, stop: StopRequest, plan: Plan) -> int:
    """Serve on `sock` in this process until `stop` is set; return the exit code.

    The pool's size is this process's lease on the budget: the plan's web share, or less
    (possibly after a wait) when more processes run than the plan counted.
    """
    if stop.is_set():  # asked to stop while booting: nothing was served, nothing to drain
        return 0
    lease = LeaseKeeper(settings, "web", wanted=plan.web.pool_size, budget=plan.capacity.available)
    size = lease.acquire(stopping=stop.is_set)
    if size == 0:
        return 0
    pool = create_pool(settings, "web", size=size)
    try:
        pool.open(wait=True, timeout=10.0)
    except PoolTimeout as exc:
        log.error("web pool could not connect to Postgres: %s", exc)
        pool.close()
        lease.close()
        return 1
    lease.keep(pool)
    try:
        return _serve_app(settings, sock, stop, pool)
    finally:
        # Whatever ended serving: the pool first, then its lease (the reverse would let
        # others grow into connections this process still holds).
        pool.close()
        lease.close()


def _serve_app(settings: Settings, sock: socket.socket, stop: StopRequest, pool: Any) -> int:
    """Run waitress on `sock` until `stop` is set, then drain; 0 when nothing was cut off."""
    # Imported after the fork: the broker's Redis client must belong to this process.
    from shared.runtime.metrics import publish_pool
    from web.app import create_app
    from worker.actors import sender
    from worker.broker import broker

    falcon_app = create_app(
        settings,
        pool=pool,
        enqueue=sender(broker),
        ping_broker=broker.client.ping,
        queue_client=broker.client,
    )
    socket_map: dict[int, Any] = {}
    app = shed_load(falcon_app, lambda: len(server.task_dispatcher.queue), settings.web_queue_limit)
    server = waitress.create_server(
        app,
        map=socket_map,
        sockets=[sock],
        threads=settings.web_threads,
        ident="settle",
        clear_untrusted_proxy_headers=True,
        channel_timeout=30,
        expose_tracebacks=False,
        # Waitress sends each write at once by default (send_bytes=1): the status line and
        # headers, then the body, two syscalls and two packets per answer. Buffered, a
        # response under 16 KiB goes out in one send when its request completes; larger
        # bodies are still sent as they are written.
        send_bytes=16 * 1024,
    )
    log.info(
        "serving on http://%s:%s with %d threads, pool of %d",
        settings.host,
        sock.getsockname()[1],
        settings.web_threads,
        pool.max_size,
    )
    stop.wake = server.pull_trigger
    publisher = publish_pool(pool, "web", queue_depth=lambda: len(server.task_dispatcher.queue))
    while not stop.is_set():
        wasyncore.loop(timeout=1.0, map=socket_map, use_poll=True, count=1)

    # Stop accepting; keep the event loop turning so in-flight responses reach their clients.
    server.accepting = False
    deadline = time.monotonic() + settings.web_shutdown_timeout
    dispatcher = server.task_dispatcher
    log.info(
        "stopping: no new connections; draining %d request(s) in flight (up to %ss)",
        dispatcher.active_count + len(dispatcher.queue),
        settings.web_shutdown_timeout,
    )
    while time.monotonic() < deadline and _busy(dispatcher, socket_map):
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=True, count=1)
    idle = not _busy(dispatcher, socket_map)
    dispatcher.shutdown(cancel_pending=True, timeout=5)
    publisher.stop()
    log.info("stopped %s", "cleanly" if idle else "with requests still in flight")
    return 0 if idle else 1


def _busy(dispatcher: Any, socket_map: dict[int, Any]) -> bool:
    if dispatcher.queue or dispatcher.active_count > 0:
        return True
    return any(
        isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len)
        for ch in list(socket_map.values())
    )


def main() -> None:
    configure_logging("web")
    children: dict[int, int] = {}  # pid -> slot
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Installed first, so that a SIGTERM during the boot checks is a clean stop as well.
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    settings = load_settings("web")
    boot_check(settings, "web")
    plan = plan_or_exit(settings, "web")  # refuse before binding the port
    multiproc.prepare(settings, "web")  # before the children import prometheus_client
    try:
        sock = listen(settings)
    except OSError as exc:
        print(
            f"settle web: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        raise SystemExit(1) from None

    def spawn(slot: int) -> None:
        # Stop signals stay blocked across the fork until the child has its own handler:
        # delivered earlier, the child would run the parent's handler (or die of SIG_DFL) and
        # then either serve on, deaf to the stop, or exit with a failure.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(settings, sock, plan)
            children[pid] = slot
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    for slot in range(settings.web_processes):
        if not stopping:
            spawn(slot)
    log.info(
        "listening on http://%s:%s (%d processes)",
        settings.host,
        sock.getsockname()[1],
        settings.web_processes,
    )

    failed = False
    crashes: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, -1)
        multiproc.process_exited(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code != 0
            continue
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
        if len(crashes) >= MAX_CRASHES:
            log.error("web processes exited %d times within %.0fs (last code %s); giving up",
                      len(crashes), CRASH_WINDOW, code)  # fmt: skip
            on_signal(signal.SIGTERM, None)
            failed = True
            continue
        if slot >= 0:
            log.warning("web process %d exited (code %s); starting another", pid, code)
            time.sleep(0.5)
            if not stopping:
                spawn(slot)
    sock.close()
    raise SystemExit(1 if failed else 0)


def _child(settings: Settings, sock: socket.socket, plan: Plan) -> NoReturn:
    """The forked web process: entered with stop signals blocked; never returns."""
    stop = StopRequest()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = 1
    try:
        code = serve(settings, sock, stop, plan)
    except BaseException:
        log.exception("web process failed")
    finally:
        logging.shutdown()
        os._exit(code)


if __name__ == "__main__":
    main()
