"""The restart policy of `shared.runtime.supervisor.Supervisor`, on real child processes:
crashes and dependencies unreachable at boot are restarted with exponential backoff for as
long as they happen, refusals (a setting, a plan) are given up on with one line, and a stop
reaches every child once."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from shared.runtime.children import exec_child
from shared.runtime.signals import StopRequest
from shared.runtime.supervisor import Supervisor, restart_counts, unreachable_counts
from tests.helpers import wait_until

KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
WAITS_FOR_SIGTERM = "import time\nwhile True: time.sleep(1)"


class QuickSupervisor(Supervisor):
    """The production policy with backoff in tenths of a second, so the test is short."""

    BACKOFF_BASE = 0.1
    BACKOFF_CAP = 0.4


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_that_keeps_getting_killed_is_restarted_with_doubling_capped_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="settle.runtime")
    stop = StopRequest()
    starts: list[int] = []
    before = restart_counts().get("test-killed", 0)

    def start(slot: int) -> int:
        starts.append(slot)
        if len(starts) >= 6:  # enough restarts seen: the sixth child lives until stopped
            return exec_child(python(WAITS_FOR_SIGTERM))
        return exec_child(python(KILLED))

    supervisor = QuickSupervisor("test-killed", "child", start, stop=stop)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(supervisor.run()))
    runner.start()
    wait_until(lambda: len(starts) >= 6, timeout=30, what="the child was started six times")
    stop.set()
    runner.join(timeout=30)

    assert codes == [0]  # the live child stopped on its SIGTERM: a clean stop
    restarts = [r.getMessage() for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(restarts) == 5
    assert all("child exited (killed by SIGKILL after" in line for line in restarts)
    delays = [line.rsplit("restarting in ", 1)[1] for line in restarts]
    assert delays == ["0.1s", "0.2s", "0.4s", "0.4s", "0.4s"]
    assert restart_counts()["test-killed"] == before + 5


def test_a_child_that_refuses_to_start_is_given_up_on_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop = StopRequest()
    starts: list[int] = []

    def start(slot: int) -> int:
        starts.append(slot)
        return exec_child(python("raise SystemExit(2)"))

    with pytest.raises(SystemExit) as ended:
        QuickSupervisor("test-boot", "child", start, stop=stop).run()

    assert ended.value.code == 2
    assert len(starts) == Supervisor.GIVE_UP_AFTER
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "settle test-boot: child refused to start 3 times in a row (a setting or its plan,"
        " exit 2); restarting cannot fix that, giving up"
    ]


def test_a_child_that_cannot_reach_a_dependency_is_restarted_for_as_long_as_it_takes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Ten failures at boot in a row (a Postgres failover, a broker restart), then the
    # dependency is back: the child runs until it is stopped.
    caplog.set_level(logging.WARNING, logger="settle.runtime")
    stop = StopRequest()
    starts: list[int] = []
    before = unreachable_counts().get("test-unreachable", 0)

    def start(slot: int) -> int:
        starts.append(slot)
        if len(starts) > 10:
            return exec_child(python(WAITS_FOR_SIGTERM))
        return exec_child(python("raise SystemExit(3)"))

    supervisor = QuickSupervisor("test-unreachable", "child", start, stop=stop)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(supervisor.run()))
    runner.start()
    wait_until(lambda: len(starts) > 10, timeout=30, what="the child was started eleven times")
    stop.set()
    runner.join(timeout=30)

    assert codes == [0]
    lines = [r.getMessage() for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(lines) == 10
    assert lines[0].startswith("child could not reach a dependency at boot (exit 3 after ")
    assert lines[0].endswith(", 1 time(s) in a row); restarting in 0.1s")
    assert lines[9].endswith(", 10 time(s) in a row); restarting in 0.4s")
    assert unreachable_counts()["test-unreachable"] == before + 10


def test_a_crash_or_an_outage_between_refusals_starts_the_count_again() -> None:
    stop = StopRequest()
    codes = iter([2, 2, 1, 2, 2, 3, 2, 2, 2])
    starts: list[int] = []

    def start(slot: int) -> int:
        starts.append(slot)
        return exec_child(python(f"raise SystemExit({next(codes)})"))

    with pytest.raises(SystemExit) as ended:
        QuickSupervisor("test-mixed", "child", start, stop=stop).run()

    assert ended.value.code == 2
    assert len(starts) == 9


def test_waiting_for_children_to_stop_polls_rather_than_spins() -> None:
    """After a stop the supervisor waits for its children: a child slow to exit (here it
    sleeps a second on SIGTERM) is looked at every POLL, not in a loop that burns a core."""
    stop = StopRequest()
    slow_to_stop = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)"
    )
    started = threading.Event()

    def start(slot: int) -> int:
        pid = exec_child(python(slow_to_stop))
        started.set()
        return pid

    class Counting(QuickSupervisor):
        looks = 0

        def _reap(self) -> None:
            Counting.looks += 1
            super()._reap()

    supervisor = Counting("test-slow-stop", "child", start, stop=stop)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(supervisor.run()))
    runner.start()
    assert started.wait(30)
    wait_until(lambda: Counting.looks >= 2, timeout=30, what="the supervisor to look twice")
    before = Counting.looks
    stop.set()
    runner.join(timeout=30)
    assert codes == [0]
    # About one look per POLL during the child's second of stopping (a spin makes thousands).
    assert Counting.looks - before < 10 / Supervisor.POLL
