"""`settle worker`: runs dramatiq with --processes/--threads from the settings and keeps it up.

When one dramatiq worker process dies, the dramatiq master stops the others and exits; this
supervisor starts it again (with a short backoff) unless it was asked to stop, so a crash
never leaves the queue without consumers. SIGTERM/SIGINT are passed on to dramatiq, which
finishes in-flight messages; the supervisor then exits with dramatiq's code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from shared.runtime import multiproc
from shared.runtime.lifecycle import boot_check, configure_logging, load_settings, plan_or_exit
from shared.runtime.settings import Settings
from worker.queues import TRANSFER_QUEUE

log = logging.getLogger("settle.worker")

#: The signals that ask the worker to stop: SIGTERM from honcho or a supervisor, SIGINT from a
#: terminal.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: Give up when dramatiq fails this many times within `CRASH_WINDOW` seconds.
MAX_CRASHES = 5
CRASH_WINDOW = 60.0


def dramatiq_command(settings: Settings, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker.dramatiq_cli",  # dramatiq's CLI with Settle's log lines
        "worker.actors",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(threads),
        "--queues",
        TRANSFER_QUEUE,
    ]


def main() -> None:
    # dramatiq's processes log into a pipe: decide json or text here, against our stderr.
    os.environ["LOG_FORMAT"] = configure_logging("worker")
    stopping = False
    child: subprocess.Popen[bytes] | None = None
    signalled: set[int] = set()  # dramatiq pids already sent their one SIGTERM

    def stop_child() -> None:
        if child is not None and child.poll() is None and child.pid not in signalled:
            signalled.add(child.pid)
            child.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return  # dramatiq takes a second SIGTERM as "quit now"; it gets only one
        stopping = True
        stop_child()

    # Installed before the boot checks, so that a stop request while booting is honoured.
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    settings = load_settings("worker")
    boot_check(settings, "worker")
    # The plan decides the thread count, so that threads and pool sizes cannot drift apart:
    # one connection per thread, fewer threads when WEB_SHARE leaves workers less.
    threads = plan_or_exit(settings, "worker").worker.pool_size
    multiproc.prepare(settings, "worker")  # before dramatiq's processes import prometheus_client

    crashes: list[float] = []
    command = dramatiq_command(settings, threads)
    while not stopping:
        log.info(
            "starting dramatiq: %d process(es) x %d thread(s)", settings.worker_processes, threads
        )
        # Its own session: a process manager that signals our whole group (honcho does)
        # must not reach dramatiq's worker processes twice: a second SIGTERM makes them
        # quit at once instead of finishing their messages. We forward one signal.
        child = subprocess.Popen(command, start_new_session=True)
        # A signal that came after the loop's check but before `child` was assigned found no
        # child to forward to; forward it now (with signals blocked, so exactly once).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stopping:
                stop_child()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        code = child.wait()
        multiproc.forget_dead()  # the live gauges of the worker processes that just exited
        if stopping:
            log.info("dramatiq stopped (exit %s)", code)
            raise SystemExit(0 if code in (0, -signal.SIGTERM) else code)
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
        if len(crashes) >= MAX_CRASHES:
            log.error(
                "dramatiq exited %d times within %.0fs (last code %s); giving up",
                len(crashes),
                CRASH_WINDOW,
                code,
            )
            raise SystemExit(1)
        log.warning("dramatiq exited unexpectedly (code %s); restarting", code)
        time.sleep(min(2 ** (len(crashes) - 1) * 0.5, 8.0))
    raise SystemExit(0)


if __name__ == "__main__":
    main()
