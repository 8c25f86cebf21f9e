"""Stop signals arriving back to back: honcho signals the whole process group while the
supervisor forwards its own SIGTERM, so a process may get a second one while its handler for
the first is still running."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A child process whose stop event, while setting itself (holding its lock), receives a second
# SIGTERM: the handler runs again in the middle of the first one, as a second signal can.
CHILD = textwrap.dedent(
    """
    import os, signal, threading
    from shared.runtime.signals import stop_signals

    class SecondSignalInside(threading.Event):
        def set(self):
            with self._cond:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # bytecodes: the handler runs between two of them
                    pass
                self._flag = True
                self._cond.notify_all()

    with stop_signals() as stop:
        stop._event = SecondSignalInside()
        stop.on_set(lambda: print("stopping", flush=True))
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    print("stopped", flush=True)
    """
)


def test_a_second_stop_signal_inside_the_first_ones_handler_stops_the_process_once() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the process hung in its stop-signal handler") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["stopping", "stopped"]
