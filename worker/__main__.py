"""`settle worker`: runs dramatiq with --processes/--threads from the settings and keeps it up;
and beside it a second dramatiq, WEBHOOK_PROCESSES x WEBHOOK_THREADS, that consumes only the
webhooks queue, so that a slow or failing webhook receiver never holds a thread that
settles transfers. Each is supervised on its own.

When one dramatiq worker process dies, the dramatiq master stops the others and exits; this
supervisor starts it again, with the backoff of `shared.runtime.supervisor.Supervisor`, for
as long as it dies of signals or crashes, or fails at boot because Postgres or the broker
cannot be reached (its worker processes exit 3): a worker set that an operator, an OOM
killer, a bad host or an outage keeps down never takes the service down (accepted transfers
wait in Postgres and the broker). Its own boot waits the same way for a dependency that is
away. It gives up, with one line and exit 2, only when dramatiq keeps refusing a setting or
its plan (exit 2): restarting cannot fix that. SIGTERM/SIGINT are passed on to dramatiq
once, and it finishes in-flight messages; the supervisor then exits 0.
"""

from __future__ import annotations

import logging
import sys

from shared.broker.messages import TRANSFER_QUEUE, WEBHOOK_QUEUE
from shared.config import Settings
from shared.runtime import multiproc
from shared.runtime.children import exec_child
from shared.runtime.supervised import Boot, Children, run_supervised

log = logging.getLogger("settle.worker")

WORKER_FORK_TIMEOUT_MS = 5_000


def dramatiq_command(
    settings: Settings,
    threads: int,
    *,
    processes: int | None = None,
    queue: str = TRANSFER_QUEUE,
    entry: str = "worker.dramatiq_entry:boot",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker.dramatiq_cli",  # dramatiq's CLI with Settle's log lines
        entry,
        "worker.actors",
        "--processes",
        str(settings.worker_processes if processes is None else processes),
        "--threads",
        str(threads),
        "--queues",
        queue,
        # How long the master waits for each worker process to finish booting before it
        # watches them (default 30 s). A worker process killed while it boots never
        # reports, and the master would sit out the whole wait before noticing; Settle
        # runs no dramatiq fork processes, which is what the wait is for.
        "--worker-fork-timeout",
        str(WORKER_FORK_TIMEOUT_MS),
    ]


def main(argv: list[str] | None = None) -> None:
    """Settle transfers and deliver webhooks: dramatiq's worker processes, kept running."""
    run_supervised("worker", __doc__, argv, dramatiq_masters)


def dramatiq_masters(boot: Boot) -> Children:
    """dramatiq's command line, started as a program of its own, once for the transfers
    queue and, with WEBHOOK_PROCESSES, once for the webhooks queue (their processes log into
    a pipe, in the LOG_FORMAT `run_supervised` decided against this terminal). The live
    gauges of the worker processes of a dramatiq that exited go with it."""
    settings = boot.settings
    # The plan decides the thread count, so that threads and pool sizes cannot drift apart:
    # one connection per thread, fewer threads when WEB_SHARE leaves workers less.
    commands = [dramatiq_command(settings, boot.plan.worker.pool_size)]
    if settings.webhook_processes:
        commands.append(
            dramatiq_command(
                settings,
                settings.webhook_threads,
                processes=settings.webhook_processes,
                queue=WEBHOOK_QUEUE,
                entry="worker.dramatiq_entry:boot_webhooks",
            )
        )

    def start(slot: int) -> int:
        command = commands[slot]
        log.info(
            "starting dramatiq for the %s queue: %s process(es) x %s thread(s)",
            command[command.index("--queues") + 1],
            command[command.index("--processes") + 1],
            command[command.index("--threads") + 1],
        )
        return exec_child(command)

    return Children(
        "dramatiq", start, slots=len(commands), reaped=lambda pid: multiproc.forget_dead()
    )


if __name__ == "__main__":
    main()
