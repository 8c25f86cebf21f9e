"""Each web process listens on a socket of its own on the one port (SO_REUSEPORT), opened
after the fork: the kernel spreads new connections over the processes, and a process that
dies takes its socket with it, so no new connection is handed to it."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field

import psutil
import pytest

from tests.e2e.conftest import Service
from tests.e2e.processes import Process, descendants, http_status
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

CONNECTIONS = 24
LOAD_THREADS = 4
#: Requests each load thread sends after the replacement serves, besides those before.
AFTER_REPLACEMENT = 50


def listening(pid: int, port: int) -> int:
    """The listening sockets `pid` holds on `port`."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


def two_web_processes(service: Service) -> tuple[Process, list[int]]:
    service.env.update(WEB_PROCESSES="2")
    web = service.start_web()
    web.wait_for_log("serving on", count=2)
    processes = descendants(web.pid)
    assert len(processes) == 2, processes
    return web, processes


def test_each_web_process_listens_on_a_socket_of_its_own_and_the_supervisor_on_none(
    service: Service,
) -> None:
    web, processes = two_web_processes(service)
    # A socket the supervisor listened on (or one opened before the fork and inherited)
    # would outlive the process serving it and keep being handed connections.
    assert [listening(pid, service.port) for pid in processes] == [1, 1]
    assert listening(web.pid, service.port) == 0
    assert web.stop() == 0


def test_connections_are_spread_over_both_web_processes(service: Service) -> None:
    web, processes = two_web_processes(service)
    clients = [
        http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        for _ in range(CONNECTIONS)
    ]
    try:
        for client in clients:  # kept open: each stays with the process that accepted it
            client.request("GET", "/healthz")
            response = client.getresponse()
            response.read()
            assert response.status == 200
        local_ports = {client.sock.getsockname()[1] for client in clients}
        served = Counter(
            pid
            for pid in processes
            for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in local_ports
        )
    finally:
        for client in clients:
            client.close()
    # The kernel picks a socket by a hash of each connection's addresses: all 24 on one
    # process would happen about once in 8 million runs (one shared socket gave whichever
    # process woke first all 32 of wrk's connections in two runs out of six).
    assert sum(served.values()) == CONNECTIONS
    assert set(served) == set(processes), served
    assert web.stop() == 0


@dataclass
class Load:
    """Threads sending GET /healthz, each on a new connection, until stopped; every answer
    is recorded with whether the killed process was known dead when its request started."""

    port: int
    dead: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[bool, int | None]] = field(default_factory=list)
    sent_after: Counter[int] = field(default_factory=Counter)

    def run(self, thread: int) -> None:
        while not self.stop.is_set():
            after = self.dead.is_set()
            status = http_status(self.port, "/healthz", timeout=10)
            self.answers.append((after, status))
            if after:
                self.sent_after[thread] += 1


def test_a_web_process_killed_under_load_leaves_every_later_request_answered(
    service: Service,
) -> None:
    web, processes = two_web_processes(service)
    load = Load(service.port)
    threads = [threading.Thread(target=load.run, args=(n,)) for n in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(load.answers) >= 200, timeout=60, what="the load runs")
        victim, survivor = processes
        os.kill(victim, signal.SIGKILL)
        # Gone means reaped (a zombie's threads may still be exiting, holding its socket).
        wait_until(lambda: not psutil.pid_exists(victim), timeout=30, what="the victim is reaped")
        load.dead.set()
        web.wait_for_log("serving on", count=3, timeout=60)  # the replacement serves
        floor = {n: load.sent_after[n] + AFTER_REPLACEMENT for n in range(LOAD_THREADS)}
        wait_until(
            lambda: all(load.sent_after[n] >= floor[n] for n in range(LOAD_THREADS)),
            timeout=120,
            what="the load goes on past the replacement",
        )
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=30)

    later = [status for after, status in load.answers if after]
    # Requests that reached the killed process before it died may have been cut off (a
    # connection it held, or one still in its socket's backlog, is reset); every request
    # sent after it was gone found a socket that answers.
    assert len(later) >= LOAD_THREADS * AFTER_REPLACEMENT
    assert set(later) == {200}, Counter(later)
    assert web.log_count("web process exited (killed by SIGKILL") == 1
    after = descendants(web.pid)
    assert len(after) == 2 and victim not in after and survivor in after
    assert [listening(pid, service.port) for pid in after] == [1, 1]
    assert web.stop() == 0
