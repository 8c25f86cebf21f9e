"""Starting a supervisor's children: a fork that runs a function of this program, or a
program of its own (`exec_child`), with the stop signals held back until the child has
handlers of its own."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from shared.errors import DependencyDown
from shared.runtime.exits import EXIT_FAILED, EXIT_UNREACHABLE
from shared.runtime.signals import STOP_SIGNALS, StopRequest, blocked_stop_signals, stop_signals

log = logging.getLogger("settle.runtime")


def run_child(role: str, target: Callable[[], int]) -> NoReturn:
    """The body of a forked child: run `target` and `os._exit` with its code. A dependency
    unreachable at boot is one line and `EXIT_UNREACHABLE`; any other error is logged with
    its traceback and exit 1. Never returns into the parent's code."""
    code = EXIT_FAILED
    try:
        code = target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except DependencyDown as exc:
        print(f"settle {role}: {exc.message}", file=sys.stderr, flush=True)
        code = EXIT_UNREACHABLE
    except BaseException:
        log.exception("settle %s process failed", role)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fork_child(role: str, target: Callable[[], int]) -> int:
    """Fork a child that runs `target` (see `run_child`); return its pid. Stop signals stay
    blocked in the child until `target` installs its own handlers with `stop_signals`."""
    with blocked_stop_signals():
        pid = os.fork()
        if pid == 0:
            run_child(role, target)
    return pid


def exec_child(argv: list[str]) -> int:
    """Start `argv` in a session of its own; return its pid. Its own session: a process
    manager that signals our whole group (honcho does) must not reach it as well, since the
    supervisor forwards the stop itself (dramatiq takes a second SIGTERM as "quit now")."""
    with blocked_stop_signals():
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                # Default actions before unblocking: a stop pending since the fork must not
                # run the parent's handler in this process.
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
    return pid


def forked(role: str, body: Callable[[StopRequest], int]) -> Callable[[int], int]:
    """A supervisor's `start`: fork a child (`fork_child`) that installs stop signals of its
    own and returns `body(stop)`, its exit code."""

    def child() -> int:
        with stop_signals() as stop:
            return body(stop)

    return lambda slot: fork_child(role, child)
