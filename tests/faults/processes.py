"""The dramatiq processes under a `settle worker`, found in /proc, and the worker process
that holds a given Postgres backend (its pid is in the connection's application_name)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psycopg

from shared.broker.messages import TRANSFER_QUEUE


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(stat.parent.name)] = int(fields[1])
    return parents


def _is_dramatiq(pid: int, queue: str = TRANSFER_QUEUE) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # `settle worker` runs dramatiq's CLI as `python -m worker.dramatiq_cli` (Settle's log
    # lines), once per queue; its worker processes are forks of it, with the same command
    # line.
    if not (b"dramatiq" in argv or b"worker.dramatiq_cli" in argv):
        return False
    return b"--queues" not in argv or argv[argv.index(b"--queues") + 1] == queue.encode()


def children(pid: int) -> list[int]:
    """The living children of `pid`."""
    return sorted(child for child, parent in _parents().items() if parent == pid)


def find_dramatiq(supervisor: int, queue: str = TRANSFER_QUEUE) -> tuple[int | None, list[int]]:
    """(the dramatiq master consuming `queue`, its worker processes) under `settle worker`
    `supervisor` right now: (None, []) while `settle worker` waits to start it again."""
    parents = _parents()
    masters = [
        pid for pid, ppid in parents.items() if ppid == supervisor and _is_dramatiq(pid, queue)
    ]
    assert len(masters) <= 1, f"expected one dramatiq master under {supervisor}: {masters}"
    if not masters:
        return None, []
    workers = [
        pid for pid, ppid in parents.items() if ppid == masters[0] and _is_dramatiq(pid, queue)
    ]
    return masters[0], sorted(workers)


def dramatiq_tree(supervisor: int, queue: str = TRANSFER_QUEUE) -> tuple[int, list[int]]:
    """(the dramatiq master consuming `queue`, its worker processes) running under `settle
    worker` `supervisor`."""
    master, workers = find_dramatiq(supervisor, queue)
    assert master is not None, f"no dramatiq master under {supervisor}"
    return master, workers


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def worker_waiting_for_a_lock(conn: psycopg.Connection) -> tuple[int, int] | None:
    """(worker process pid, its backend pid) of a settle worker connection that waits for a
    lock in this database, or None."""
    row = conn.execute(
        "SELECT application_name, pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE %s AND wait_event_type = 'Lock' LIMIT 1",
        ("settle:worker:%",),
    ).fetchone()
    if row is None:
        return None
    return int(str(row[0]).rsplit(":", 1)[1]), int(row[1])
