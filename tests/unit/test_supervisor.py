"""The restart policy of `shared.runtime.lifecycle.Supervisor`, on real child processes:
crashes are restarted with exponential backoff for as long as they happen, failures at boot
are given up on with one line, and a stop reaches every child once."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from shared.runtime import lifecycle
from shared.runtime.lifecycle import StopRequest, Supervisor, exec_child
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
    before = lifecycle.restart_counts().get("test-killed", 0)

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
    assert lifecycle.restart_counts()["test-killed"] == before + 5


@pytest.mark.parametrize(("child_code", "exit_code"), [(2, 2), (3, 1)])
def test_a_child_that_fails_at_boot_the_same_way_is_given_up_on_with_one_line(
    child_code: int, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = StopRequest()
    starts: list[int] = []

    def start(slot: int) -> int:
        starts.append(slot)
        return exec_child(python(f"raise SystemExit({child_code})"))

    with pytest.raises(SystemExit) as ended:
        QuickSupervisor("test-boot", "child", start, stop=stop).run()

    assert ended.value.code == exit_code
    assert len(starts) == Supervisor.GIVE_UP_AFTER
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("settle test-boot: child failed at boot 3 times in a row (")
    assert lines[0].endswith("restarting cannot fix that, giving up")


def test_a_crash_between_boot_failures_starts_the_count_again() -> None:
    stop = StopRequest()
    codes = iter([2, 2, 1, 2, 2, 2])
    starts: list[int] = []

    def start(slot: int) -> int:
        starts.append(slot)
        return exec_child(python(f"raise SystemExit({next(codes)})"))

    with pytest.raises(SystemExit) as ended:
        QuickSupervisor("test-mixed", "child", start, stop=stop).run()

    assert ended.value.code == 2
    assert len(starts) == 6
