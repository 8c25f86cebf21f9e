"""Revoking an API key takes effect within one second in every web process, although each
process remembers the keys it has looked up: `settle keys revoke` against two running web
processes, each holding the key as live, then requests on connections served by each."""

from __future__ import annotations

import datetime
import http.client
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from shared.ledger import auth
from tests.e2e.conftest import Service
from tests.e2e.processes import SETTLE, descendants
from tests.helpers import make_user

pytestmark = pytest.mark.e2e

#: The contract: a key revoked at T is refused for every request sent from T + 1 s on.
REVOCATION_SECONDS = 1.0
#: How long after the revocation the test keeps asking, to see it hold.
WATCH_SECONDS = 2.0
#: Connections opened, at most, until each web process has accepted one.
MAX_CONNECTIONS = 200


@dataclass
class Served:
    """A keep-alive connection and the web process that accepted it."""

    conn: http.client.HTTPConnection
    pid: int
    answers: list[tuple[float, int]] = field(default_factory=list)  # (sent at, status)

    def get(self, path: str, key: str) -> int:
        sent_at = time.time()
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = self.conn.getresponse()
        resp.read()
        self.answers.append((sent_at, resp.status))
        return resp.status


def serving_pid(conn: http.client.HTTPConnection, candidates: list[int]) -> int | None:
    """The process among `candidates` that holds the server end of `conn` (Linux: the socket
    whose peer is this client's port, found in /proc/net/tcp, then among the processes'
    file descriptors)."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    server_port = conn.sock.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            inode = fields[9]
    if inode is None:
        return None
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def connections_to_every_process(port: int, pids: list[int], path: str, key: str) -> list[Served]:
    """Keep-alive connections until each of `pids` serves at least one, each having answered
    `path` with `key` once (so every process has looked the key up)."""
    served: list[Served] = []
    for _ in range(MAX_CONNECTIONS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
        pid = serving_pid_after_request(conn, pids, path, key)
        served.append(Served(conn, pid))
        if {s.pid for s in served} >= set(pids):
            return served
    raise AssertionError(
        f"{MAX_CONNECTIONS} connections, yet not every web process {pids} accepted one"
    )


def serving_pid_after_request(
    conn: http.client.HTTPConnection, pids: list[int], path: str, key: str
) -> int:
    # A connection belongs to a process once that process has accepted it: after an answer.
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    pid = serving_pid(conn, pids)
    assert pid is not None, "no web process holds the connection"
    return pid


def test_a_revoked_key_is_refused_by_every_web_process_within_a_second(
    service: Service, db: psycopg.Connection
) -> None:
    web = service.start_web()
    web.wait_for_log("serving on", count=2)  # both processes accept connections
    pids = [pid for pid in descendants(web.pid) if pid != web.pid]
    assert len(pids) == int(service.env["WEB_PROCESSES"]) == 2
    user = make_user(db, "Revoked Soon")
    created = auth.create_key(db, user_id=user, label="revocation e2e")
    path = f"/users/{user}"
    served = connections_to_every_process(service.port, pids, path, created.key)
    for s in served:  # every process holds the key as live, and remembers it
        assert s.get(path, created.key) == 200

    revoke = subprocess.run(
        [str(SETTLE), "keys", "revoke", str(created.id)],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr
    row = db.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (created.id,)).fetchone()
    assert row is not None and isinstance(row[0], datetime.datetime)
    revoked_at = row[0].timestamp()  # the revoking transaction's start: before its commit

    # Ask on every connection until each has been refused and the contract's second (and
    # a little more) has passed; bounded, in case a process never refuses.
    deadline = time.time() + 30
    while time.time() < deadline:
        for s in served:
            s.get(path, created.key)
        watched = time.time() > revoked_at + REVOCATION_SECONDS + WATCH_SECONDS
        if watched and all(s.answers[-1][1] == 401 for s in served):
            break

    for s in served:
        late = [(round(t - revoked_at, 3), status) for t, status in s.answers if t >= revoked_at]
        # From 1 s after the revocation on, every answer of every process is a refusal...
        accepted_late = [
            (after, status)
            for after, status in late
            if after >= REVOCATION_SECONDS and status != 401
        ]
        assert accepted_late == [], f"web process {s.pid} still accepted the key: {late}"
        # ...and once a process refused the key, it never accepted it again.
        statuses = [status for _, status in late]
        first_refusal = statuses.index(401) if 401 in statuses else len(statuses)
        assert set(statuses[first_refusal:]) == {401}, f"process {s.pid}: {late}"
        assert statuses.count(401) >= 2, f"process {s.pid} was not seen refusing: {late}"
    assert {s.pid for s in served} == set(pids)
    for s in served:
        s.conn.close()
