"""Start the service's real processes the way the Procfile does, wait for them, stop them.

Each role runs as `settle <role>` in a session of its own, as honcho starts Procfile entries,
with its output in a log file (a pipe nobody reads would block it). `stop` sends SIGTERM
either to the whole process group (what honcho does) or to the main process only (what a
container runtime does), waits for the exit code, and fails with the logs when the process
does not exit in time. Waits poll a condition until a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.runtime.embedded import free_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
SETTLE = Path(sys.executable).with_name("settle")
LOG_TAIL = 12_000

_serial = itertools.count(1)


def process_env(**overrides: str) -> dict[str, str]:
    """The environment of processes under test: this one's (conftest exported the test
    servers), a free port, small process counts, quick sweeps and no default rate limit,
    then `overrides`. No webhook delivery processes unless a test asks for them
    (WEBHOOK_PROCESSES): the tests that count a worker's processes or log lines count those
    that settle."""
    env = dict(os.environ)
    env.update(
        PORT=str(free_port()),
        HOST="127.0.0.1",
        WEB_PROCESSES="2",
        WEB_THREADS="4",
        WORKER_PROCESSES="2",
        WORKER_THREADS="4",
        WEBHOOK_PROCESSES="0",
        SWEEPER_INTERVAL_SECONDS="0.5",
        WEB_SHUTDOWN_TIMEOUT="20",
        PYTHONUNBUFFERED="1",
        # Keys without a limit of their own are not limited: the load these tests make is
        # not what they test. tests/e2e/test_rate_limits.py sets its own.
        RATE_LIMIT_PER_SECOND="0",
    )
    env.update(overrides)
    return env


@dataclass
class Process:
    """One running `settle <role>` and its log."""

    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def logs(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_count(self, text: str) -> int:
        return self.log_path.read_text(encoding="utf-8", errors="replace").count(text)

    def wait_for_log(
        self, text: str, *, count: int = 1, timeout: float = 30.0, interval: float = 0.05
    ) -> None:
        """Wait until `text` appears `count` times in the log; fail early if the process dies."""

        def seen() -> bool:
            if not self.running():
                raise AssertionError(
                    f"settle {self.role} exited ({self.popen.returncode}) before logging"
                    f" {text!r}:\n{self.logs()}"
                )
            return self.log_count(text) >= count

        try:
            wait_until(
                seen,
                timeout=timeout,
                what=f"settle {self.role} logs {text!r} x{count}",
                interval=interval,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- settle {self.role} log ---\n{self.logs()}") from None

    def send(self, signum: int, *, group: bool) -> None:
        """Send `signum` to the process group (as honcho does) or to the main process only."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)

    def wait(self, *, timeout: float) -> int:
        """The exit code, once the process and all its descendants (forked web processes,
        dramatiq's processes, which run in a session of their own) have exited. Fails with
        the log if that takes longer than `timeout` seconds."""
        family = descendants(self.pid)
        try:
            self.exit_code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"settle {self.role} did not exit within {timeout:.0f}s:\n{self.logs()}"
            ) from None
        try:
            wait_until(
                lambda: not [pid for pid in family if _alive(pid)],
                timeout=timeout,
                what=f"every process settle {self.role} started has exited",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return self.exit_code

    def stop(self, *, group: bool = True, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (see `wait`)."""
        self.send(signal.SIGTERM, group=group)
        return self.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process and every descendant (cleanup after a failed test)."""
        for pid in [self.pid, *descendants(self.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Pids of the living descendants of `pid` (Linux: read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start(role: str, env: Mapping[str, str], log_dir: Path, *args: str) -> Process:
    """Run `settle <role> <args>` in a new session with `env`, logging to a file under
    `log_dir`."""
    log_path = log_dir / f"{role}-{next(_serial)}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [str(SETTLE), role, *args],
            env=dict(env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(role, popen, log_path)


def http_status(port: int, path: str, *, timeout: float = 2.0) -> int | None:
    """The status of GET `path`, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def wait_until_ready(web: Process, port: int, *, timeout: float = 30.0) -> None:
    """Wait until `settle web` answers GET /readyz with 200 (Postgres and Redis reachable)."""

    def ready() -> bool:
        if not web.running():
            raise AssertionError(f"settle web exited ({web.popen.returncode}):\n{web.logs()}")
        return http_status(port, "/readyz") == 200

    try:
        wait_until(ready, timeout=timeout, what="GET /readyz answers 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- settle web log ---\n{web.logs()}") from None


def report(processes: Iterable[Process]) -> str:
    """Every process's log, for a failure report."""
    return "\n".join(f"--- settle {p.role} (pid {p.pid}) ---\n{p.logs()}" for p in processes)
