"""`settle web`: the waitress launcher, the composition root of the web processes.

The parent forks WEB_PROCESSES children; each opens its own pool after the fork, then its
own listening socket on HOST:PORT (SO_REUSEPORT: the kernel spreads new connections over
the children's sockets) and serves with WEB_THREADS threads. A socket belongs to the one
process that opened it, so a child that dies, however it dies, takes its socket with it and
the kernel hands no new connection to it. The parent holds only a reservation of the port,
bound but never listening (see `reserve_port`). Waitress has no signal handling of its own,
so each child drives waitress's event loop itself: on SIGTERM it accepts what waits in its
socket's backlog, closes the socket, lets in-flight requests finish and their responses
flush, closes its pool and exits 0. The parent passes SIGTERM on and replaces a child that
dies on its own, with the backoff and give-up rules of `shared.runtime.supervisor.Supervisor`;
meanwhile the other children take every new connection. See
docs/decisions/listening-socket-per-process.md.

The parent never exits because a dependency is away (under honcho that would stop the
worker and the sweeper too): its boot waits for Postgres and the broker
(`shared.runtime.boot.wait_for_boot`), and for a port still held by a process on its way
out, with the supervisors' backoff. A setting it cannot use (a plan that does not fit, an
address it may not bind) ends it with one line and exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shared.config import Settings
from shared.db.budget import Plan
from shared.errors import Overloaded, RateLimited
from shared.events.waiting import EventWatch
from shared.runtime import multiproc
from shared.runtime.children import forked
from shared.runtime.exits import EXIT_REFUSED, exit_with
from shared.runtime.leased_pool import leased_pool
from shared.runtime.signals import StopRequest
from shared.runtime.supervised import Boot, Children, run_supervised
from shared.runtime.supervisor import Backoff, Supervisor
from web.errors import render
from web.waitress_adapter import WaitressServer, WSGIApp

log = logging.getLogger("settle.web")


def shed_load(
    app: WSGIApp,
    queue_depth: Callable[[], int],
    limit: int,
    *,
    over_limit: Callable[[dict[str, Any]], RateLimited | None] | None = None,
    on_limited: Callable[[], Any] = lambda: None,
) -> WSGIApp:
    """Answer 503 + Retry-After at once while more than `limit` requests wait for a thread.

    Waitress's task queue is unbounded; without this a burst would queue without limit and
    every request would time out instead of a few being turned away quickly.

    The per-key rate limit comes first: before shedding a request, `over_limit` (web.ratelimit
    .OverLimit) is asked whether its key is over its limit, and such a request is answered
    429 (and `on_limited` called) rather than 503, so that the key flooding the process is
    told it is the cause. That check reads no database and costs one Redis round trip.
    """
    body = (
        b'{"error":{"code":"%s","message":"the server is overloaded; retry"}}'
        % Overloaded.code.encode()
    )

    def shedding(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if queue_depth() > limit:
            refused = None if over_limit is None else over_limit(environ)
            if refused is not None:
                on_limited()
                status, headers, limited_body = render(refused)
                start_response(status, [*headers, ("X-Request-Id", os.urandom(16).hex())])
                return [limited_body]
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Retry-After", str(Overloaded.retry_after)),
                    ("X-Request-Id", os.urandom(16).hex()),
                ],
            )
            return [body]
        return app(environ, start_response)

    return shedding


def reserve_port(settings: Settings) -> socket.socket:
    """The parent's hold on HOST:PORT: a socket bound there with SO_REUSEPORT but never
    listening, so the kernel hands it no connection, while the children's listening sockets
    join it on the port. It keeps another program from taking the port while no child
    listens (all of them being replaced), and it tells which port PORT=0 picked.

    A plain bind comes first, so that a port someone else holds (a previous `settle web` on
    its way out, another program) fails with `OSError` as it would without SO_REUSEPORT,
    rather than be shared. The reservation itself sets no SO_REUSEADDR: with it, a plain bind
    elsewhere would be let through while nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((settings.host, settings.port))
        port = probe.getsockname()[1]
    reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((settings.host, port))
    except OSError:
        reservation.close()
        raise
    return reservation


def listen(host: str, port: int) -> socket.socket:
    """This web process's own listening socket on `host`:`port`, beside the other web
    processes' (SO_REUSEPORT). Opened by the process that serves it, after the fork, and
    never shared: when the process exits, however it exits, the socket closes, and the
    kernel hands new connections to the others' sockets only. (Connections already in this
    socket's backlog, accepted by the kernel but not yet by waitress, are reset then; their
    clients retry.) Raises `OSError` when the port cannot be joined."""
    sock = socket.create_server((host, port), backlog=1024, reuse_port=True)
    sock.setblocking(False)
    return sock


def reserve_port_when_free(settings: Settings, stop: StopRequest) -> socket.socket | None:
    """`reserve_port`, a port in use (a previous web on its way out) tried again with the
    supervisors' backoff, each attempt logged; any other refusal (an address this host does
    not have, a port it may not bind) exits 2: it is the setting. None when a stop is
    requested meanwhile."""
    backoff = Backoff(Supervisor.BACKOFF_BASE, settings.restart_backoff_max_seconds)
    while not stop.is_set():
        try:
            return reserve_port(settings)
        except OSError as exc:
            where = f"cannot listen on {settings.host}:{settings.port}: {exc}"
            if exc.errno != errno.EADDRINUSE:
                exit_with("web", where, EXIT_REFUSED)
            delay = backoff.next()
            log.warning("%s; trying again in %.1fs (attempt %d)", where, delay, backoff.failures)
            stop.wait(delay)
    return None


def serve(settings: Settings, port: int, stop: StopRequest, plan: Plan) -> int:
    """Serve on a socket of this process's own on `port` until `stop` is set; return the
    exit code.

    The pool's size is this process's lease on the budget: the plan's web share, or less
    (possibly after a wait) when more processes run than the plan counted.
    """
    if stop.is_set():  # asked to stop while booting: nothing was served, nothing to drain
        return 0
    with leased_pool(settings, "web", plan, stopping=stop.is_set) as pool:
        if pool is None:
            return 0
        with event_watch(settings, plan, stop) as watch:
            return _serve_app(settings, port, stop, pool, watch)


@contextlib.contextmanager
def event_watch(settings: Settings, plan: Plan, stop: StopRequest) -> Iterator[EventWatch | None]:
    """This process's event watch (`shared.events.waiting`) on a leased connection of its own
    (the plan's `events` role), for the `with` body; None when EVENT_WAITERS=0 (long-polls
    are answered at once), or when stopped while waiting for the lease."""
    if settings.waiters == 0:
        yield None
        return
    with leased_pool(settings, "events", plan, stopping=stop.is_set) as pool:
        if pool is None:
            yield None
            return
        watch = EventWatch(pool, limit=settings.waiters, interval=settings.event_poll_ms / 1000)
        watch.start()
        try:
            yield watch
        finally:
            watch.close()


def _serve_app(
    settings: Settings,
    port: int,
    stop: StopRequest,
    pool: Any,
    watch: EventWatch | None,
) -> int:
    """Listen on `port` and run waitress until `stop` is set, then drain; 0 when nothing was
    cut off. Long-polls waiting on `watch` are answered at once when the drain starts."""
    # Built after the fork: the broker's client must belong to this process.
    from shared.broker.sending import sender
    from shared.ledger.auth import PrincipalCache
    from shared.ratelimit.buckets import create_limiter
    from shared.runtime.metrics import publish_pool
    from web.app import create_app
    from web.metrics import RATE_LIMIT_UNCHECKED, RATE_LIMITED, SHED_ROUTE
    from web.ratelimit import OverLimit
    from worker import actors

    broker = actors.declare(settings)
    keys = PrincipalCache(settings.api_key_cache_seconds)
    limiter = create_limiter(settings, on_unchecked=RATE_LIMIT_UNCHECKED.inc)
    falcon_app = create_app(
        settings,
        pool=pool,
        enqueue=sender(broker),
        enqueue_many=broker.send_batches,
        ping_broker=broker.ping,
        queues=broker,
        watch=watch,
        keys=keys,
        limiter=limiter,
    )
    app = shed_load(
        falcon_app,
        lambda: server.queue_depth(),
        settings.web_queue_limit,
        over_limit=OverLimit(keys, limiter),
        on_limited=RATE_LIMITED.labels(SHED_ROUTE).inc,
    )
    # Opened last, once this process can answer: the kernel routes connections to a socket
    # from the moment it listens.
    server = WaitressServer(app, listen(settings.host, port), threads=settings.web_threads)
    log.info(
        "serving on http://%s:%s with %d threads, pool of %d, up to %d long-polls waiting",
        settings.host,
        port,
        settings.web_threads,
        pool.max_size,
        0 if watch is None else watch.limit,
    )
    stop.on_set(server.wake)  # the drain starts now, not at the loop's next timeout
    publisher = publish_pool(pool, "web", queue_depth=server.queue_depth)
    while not stop.is_set():
        server.run_once(timeout=1.0)

    # Take in what waits in the backlog and close the socket, so that the kernel sends new
    # connections to the other web processes (or refuses them when every one is stopping);
    # keep the event loop turning so in-flight responses reach their clients. Long-polls are
    # answered now with what they have: a drain must not wait out their deadlines.
    server.stop_accepting()
    if watch is not None:
        watch.close()
    deadline = time.monotonic() + settings.web_shutdown_timeout
    log.info(
        "stopping: no new connections; draining %d request(s) in flight (up to %ss)",
        server.in_flight(),
        settings.web_shutdown_timeout,
    )
    while time.monotonic() < deadline and server.busy():
        server.run_once(timeout=0.05)
    idle = not server.busy()
    server.shutdown(timeout=5)
    publisher.stop()
    limiter.close()
    log.info("stopped %s", "cleanly" if idle else "with requests still in flight")
    return 0 if idle else 1


def main(argv: list[str] | None = None) -> None:
    """Serve the HTTP API and the dashboard (WEB_PROCESSES processes x WEB_THREADS threads)."""
    run_supervised("web", __doc__, argv, web_processes)


def web_processes(boot: Boot) -> Children | None:
    """WEB_PROCESSES forked web processes, each listening on a socket of its own; the port
    is reserved here once the boot has checked the plan (refuse before binding the port);
    None when stopped while the port was busy."""
    settings = boot.settings
    held = reserve_port_when_free(settings, boot.stop)
    if held is None:
        return None
    port = held.getsockname()[1]
    log.info(
        "listening on http://%s:%s (%d processes, a socket each)",
        settings.host,
        port,
        settings.web_processes,
    )

    def child(stop: StopRequest) -> int:
        # Only the parent holds the port this way: the child's copy of the reservation goes.
        held.close()
        return serve(settings, port, stop, boot.plan)

    return Children(
        "web process",
        forked("web", child),
        slots=settings.web_processes,
        reaped=multiproc.process_exited,
        close=held.close,
    )


if __name__ == "__main__":
    main()
