"""`settle worker`: runs dramatiq with --processes/--threads from the settings and keeps it up.

When one dramatiq worker process dies, the dramatiq master stops the others and exits; this
supervisor starts it again, with the backoff of `shared.runtime.lifecycle.Supervisor`, for
as long as it dies of signals or crashes: a worker set that an operator, an OOM killer or a
bad host keeps killing never takes the service down (accepted transfers wait in Postgres and
the broker). It gives up, with one line, only when dramatiq keeps failing at boot (its
worker processes exit 2 for a refused plan or setting, 3 for an unreachable dependency):
restarting cannot fix that. SIGTERM/SIGINT are passed on to dramatiq once, and it finishes
in-flight messages; the supervisor then exits 0.
"""

from __future__ import annotations

import logging
import os
import sys

from shared.broker.messages import TRANSFER_QUEUE
from shared.runtime import multiproc
from shared.runtime.lifecycle import (
    boot_check,
    configure_logging,
    exec_child,
    load_settings,
    plan_or_exit,
    stop_signals,
    supervise,
    takes_no_arguments,
)
from shared.runtime.settings import Settings

log = logging.getLogger("settle.worker")

WORKER_FORK_TIMEOUT_MS = 5_000


def dramatiq_command(settings: Settings, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker.dramatiq_cli",  # dramatiq's CLI with Settle's log lines
        "worker.dramatiq_entry:boot",
        "worker.actors",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(threads),
        "--queues",
        TRANSFER_QUEUE,
        # How long the master waits for each worker process to finish booting before it
        # watches them (default 30 s). A worker process killed while it boots never
        # reports, and the master would sit out the whole wait before noticing; Settle
        # runs no dramatiq fork processes, which is what the wait is for.
        "--worker-fork-timeout",
        str(WORKER_FORK_TIMEOUT_MS),
    ]


def main(argv: list[str] | None = None) -> None:
    takes_no_arguments("worker", __doc__, argv)
    # dramatiq's processes log into a pipe: decide json or text here, against our stderr.
    os.environ["LOG_FORMAT"] = configure_logging("worker")
    with stop_signals() as stop:
        settings = load_settings("worker")
        boot_check(settings, "worker")
        # The plan decides the thread count, so that threads and pool sizes cannot drift
        # apart: one connection per thread, fewer threads when WEB_SHARE leaves workers less.
        threads = plan_or_exit(settings, "worker").worker.pool_size
        multiproc.prepare(settings, "worker")  # before dramatiq's processes import prometheus
        from shared.runtime.metrics import count_restarts  # after prepare

        count_restarts()
        command = dramatiq_command(settings, threads)

        def start(slot: int) -> int:
            log.info(
                "starting dramatiq: %d process(es) x %d thread(s)",
                settings.worker_processes,
                threads,
            )
            return exec_child(command)

        # The live gauges of the worker processes of a dramatiq that exited go with it.
        code = supervise(
            "worker", "dramatiq", start, stop=stop, reaped=lambda pid: multiproc.forget_dead()
        )
    raise SystemExit(code)


if __name__ == "__main__":
    main()
