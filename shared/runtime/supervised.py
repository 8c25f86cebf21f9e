"""The one boot path of `settle web`, `settle worker` and `settle sweeper`: each is a
supervisor of children that do the work, and `run_supervised` is its whole life but for
what its children are.

The order is the point, so it is written once: arguments refused before anything; logging
next, decided against this terminal (children that log into a pipe are told the format
through LOG_FORMAT); stop signals before the first wait, so that a stop during the boot is
a clean exit 0; the settings (exit 2 when one is malformed); the metrics folder before
anything imports prometheus-client; then `wait_for_boot` (Postgres, the broker and the
plan, waited for as long as they are away), and only then the children, kept running by a
`Supervisor` until a stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from shared.config import Settings
from shared.db.budget import Plan
from shared.runtime import multiproc
from shared.runtime.boot import configure_logging, load_settings, takes_no_arguments, wait_for_boot
from shared.runtime.exits import EXIT_OK
from shared.runtime.signals import StopRequest, stop_signals
from shared.runtime.supervisor import Supervisor


@dataclass(frozen=True)
class Boot:
    """What a supervisor's boot established, for the children it starts."""

    role: str
    settings: Settings
    plan: Plan
    stop: StopRequest


@dataclass(frozen=True)
class Children:
    """What a supervisor keeps running: `slots` children, each started by `start(slot)`,
    which returns its pid (`shared.runtime.children`). `what` names one in log lines;
    `reaped(pid)` is called for each that exits, before it is replaced; `close` once every
    child has exited (what the supervisor held for them, such as web's listening socket)."""

    what: str
    start: Callable[[int], int]
    slots: int = 1
    reaped: Callable[[int], object] | None = None
    close: Callable[[], object] | None = None


def run_supervised(
    role: str, doc: str | None, argv: list[str] | None, children: Callable[[Boot], Children | None]
) -> NoReturn:
    """The life of `settle <role>` (see the module docstring); `doc` is its `--help`.
    `children(boot)` says what to keep running once the boot is done, or None when a stop
    came while it prepared them. Exits 0 when stopped (children all stopped cleanly), 1
    when a child did not stop cleanly, 2 for a refused setting or plan."""
    takes_no_arguments(role, doc, argv)
    os.environ["LOG_FORMAT"] = configure_logging(role)
    with stop_signals() as stop:
        settings = load_settings(role)
        multiproc.prepare(settings, role)  # before anything imports prometheus_client
        from shared.runtime.metrics import count_restarts  # after prepare

        count_restarts(role)
        plan = wait_for_boot(settings, role, stop)
        kept = None if plan is None else children(Boot(role, settings, plan, stop))
        if kept is None:  # stopped while waiting: nothing was started
            raise SystemExit(EXIT_OK)
        supervisor = Supervisor(
            role,
            kept.what,
            kept.start,
            stop=stop,
            slots=kept.slots,
            reaped=kept.reaped,
            backoff_cap=settings.restart_backoff_max_seconds,
        )
        try:
            code = supervisor.run()
        finally:
            if kept.close is not None:
                kept.close()
    raise SystemExit(code)
