"""`settle web`: the waitress launcher, the composition root of the web processes.

The parent binds one listening socket and forks WEB_PROCESSES children that share it; each
child opens its own pool after the fork and serves with WEB_THREADS threads. Waitress has no
signal handling of its own, so each child drives waitress's event loop itself: on SIGTERM it
stops accepting, lets in-flight requests finish and their responses flush, closes its pool
and exits 0. The parent holds the socket, passes SIGTERM on and replaces a child that dies
on its own, with the backoff and give-up rules of `shared.runtime.lifecycle.Supervisor`; the
socket stays open meanwhile, so the other children keep answering.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel

from shared.db.budget import Plan
from shared.errors import Overloaded
from shared.runtime import multiproc
from shared.runtime.lifecycle import (
    EXIT_FAILED,
    StopRequest,
    boot_check,
    configure_logging,
    exit_with,
    fork_child,
    leased_pool,
    load_settings,
    plan_or_exit,
    stop_signals,
    supervise,
)
from shared.runtime.settings import Settings

log = logging.getLogger("settle.web")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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
    with leased_pool(settings, "web", plan, stopping=stop.is_set) as pool:
        if pool is None:
            return 0
        return _serve_app(settings, sock, stop, pool)


def _serve_app(settings: Settings, sock: socket.socket, stop: StopRequest, pool: Any) -> int:
    """Run waitress on `sock` until `stop` is set, then drain; 0 when nothing was cut off."""
    # Installed after the fork: the broker's Redis client must belong to this process.
    from shared.runtime.metrics import publish_pool
    from web.app import create_app
    from worker import actors

    broker = actors.install(settings)
    falcon_app = create_app(
        settings,
        pool=pool,
        enqueue=actors.sender(broker),
        ping_broker=actors.pinger(broker),
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
    stop.on_set(server.pull_trigger)  # wake the loop: the drain starts now, not at its timeout
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
    with stop_signals() as stop:
        settings = load_settings("web")
        boot_check(settings, "web")
        plan = plan_or_exit(settings, "web")  # refuse before binding the port
        multiproc.prepare(settings, "web")  # before the children import prometheus_client
        try:
            sock = listen(settings)
        except OSError as exc:
            exit_with(
                "web", f"cannot listen on {settings.host}:{settings.port}: {exc}", EXIT_FAILED
            )
        log.info(
            "listening on http://%s:%s (%d processes)",
            settings.host,
            sock.getsockname()[1],
            settings.web_processes,
        )
        try:
            code = supervise(
                "web",
                "web process",
                lambda slot: fork_child("web", lambda: _child(settings, sock, plan)),
                stop=stop,
                slots=settings.web_processes,
                reaped=multiproc.process_exited,
            )
        finally:
            sock.close()
    raise SystemExit(code)


def _child(settings: Settings, sock: socket.socket, plan: Plan) -> int:
    """The forked web process (entered with stop signals blocked): serve until stopped."""
    with stop_signals() as stop:
        return serve(settings, sock, stop, plan)


if __name__ == "__main__":
    main()
