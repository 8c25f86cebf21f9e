"""Supervision: children restarted with exponential backoff when they crash or cannot reach
a dependency at boot, for as long as that lasts; given up on only when they keep refusing a
setting or their plan. Restarts, and boot attempts that found a dependency unreachable, are
counted for whoever reports them (`shared.runtime.metrics`)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.runtime.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    describe_exit,
    exit_with,
)
from shared.runtime.signals import StopRequest, blocked_stop_signals

log = logging.getLogger("settle.runtime")


class Backoff:
    """Delays that double from `base` up to `cap`, for attempts that keep failing: 0.5, 1,
    2, 4 ... `cap` seconds. `reset` starts again from `base`."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


# Restarts, and boot attempts that found a dependency unreachable, counted for whoever wants
# to report them (a metrics exporter, a status page).
_restarts: collections.Counter[str] = collections.Counter()
_restart_listeners: list[Callable[[str, str], None]] = []
_unreachable: collections.Counter[str] = collections.Counter()
_unreachable_listeners: list[Callable[[str], None]] = []


def restart_counts() -> dict[str, int]:
    """Restarts made by this process's supervisors so far, by role."""
    return dict(_restarts)


def unreachable_counts() -> dict[str, int]:
    """Boot attempts in this process (its own, and its supervised children's) that found a
    dependency unreachable so far, by role."""
    return dict(_unreachable)


def on_restart(listener: Callable[[str, str], None]) -> None:
    """Call `listener(role, cause)` on every restart a supervisor in this process makes."""
    _restart_listeners.append(listener)


def on_unreachable(listener: Callable[[str], None]) -> None:
    """Call `listener(role)` on every boot attempt in this process that found a dependency
    unreachable: a supervised child that exited 3, or `wait_for_boot`'s own check."""
    _unreachable_listeners.append(listener)


def count_unreachable(role: str) -> None:
    """Count a boot attempt of `role` that found a dependency unreachable, and tell the
    listeners."""
    _unreachable[role] += 1
    for listener in list(_unreachable_listeners):
        listener(role)


def count_restart(role: str, cause: str) -> None:
    """Count a restart of a child of `role`, and tell the listeners."""
    _restarts[role] += 1
    for listener in list(_restart_listeners):
        listener(role, cause)


@dataclass
class _Slot:
    backoff: Backoff  # its failures: deaths in a row, since the last run of STABLE_AFTER
    pid: int | None = None
    started: float = 0.0
    refusals: int = 0  # consecutive exits with EXIT_REFUSED
    unreachable: int = 0  # consecutive exits with EXIT_UNREACHABLE
    due: float | None = None  # when a restart is due


class Supervisor:
    """Keeps `slots` children running until stopped.

    A child that dies (a signal, exit 1, an unexpected exit 0) is started again after an
    exponential backoff, `BACKOFF_BASE` doubled per consecutive death up to `backoff_cap`
    (RESTART_BACKOFF_MAX_SECONDS, 30 s by default); a run that lasted `STABLE_AFTER` seconds
    resets it. A child that exits 3 could not reach a dependency at boot (Postgres or the
    broker down, a failover under way): that passes, so it is restarted the same way, for
    as long as it takes, each attempt logged with how many in a row and counted
    (`on_unreachable`). A child that exits 2 refused a setting or its plan: once it does so
    `GIVE_UP_AFTER` times in a row, restarting cannot help, and the supervisor stops the
    others and ends with one line and exit 2. Every restart is logged with its cause and
    next delay, and counted (`restart_counts`).

    On a stop request each child gets one SIGTERM; `run` returns 0 once all have exited
    cleanly (exit 0 or killed by that SIGTERM), else 1.
    """

    BACKOFF_BASE = 0.5
    BACKOFF_CAP = 30.0
    #: A child that lived this long booted and served (dramatiq and a web process boot in a
    #: second or two), so its death is not a crash loop: the next restart is prompt. Deaths
    #: sooner than this, in a row, are what the backoff is for.
    STABLE_AFTER = 3.0
    GIVE_UP_AFTER = 3
    POLL = 0.1

    def __init__(
        self,
        role: str,
        what: str,
        start: Callable[[int], int],
        *,
        stop: StopRequest,
        slots: int = 1,
        reaped: Callable[[int], object] | None = None,
        backoff_cap: float | None = None,
    ) -> None:
        self._role = role
        self._reaped = reaped
        self._what = what
        self._start = start
        self._stop = stop
        cap = self.BACKOFF_CAP if backoff_cap is None else backoff_cap
        self._slots = [_Slot(Backoff(self.BACKOFF_BASE, cap)) for _ in range(slots)]
        self._signalled: set[int] = set()
        self._failed = False
        self._refusal: tuple[str, int] | None = None
        stop.on_set(self._forward_stop)

    def _forward_stop(self) -> None:
        for slot in self._slots:
            if slot.pid is not None and slot.pid not in self._signalled:
                self._signalled.add(slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        slot = self._slots[index]
        slot.due = None
        with blocked_stop_signals():
            slot.pid = self._start(index)
            slot.started = time.monotonic()
            if self._stop.is_set():  # asked to stop while it forked: it gets its SIGTERM now
                self._forward_stop()

    def run(self) -> int:
        """Supervise until every child has exited after a stop (or a give-up); return the
        exit code for this process."""
        for index in range(len(self._slots)):
            if not self._stop.is_set():
                self._spawn(index)
        while any(s.pid is not None or s.due is not None for s in self._slots):
            self._reap()
            now = time.monotonic()
            for index, slot in enumerate(self._slots):
                if slot.due is not None and self._stop.is_set():
                    slot.due = None
                elif slot.due is not None and now >= slot.due:
                    self._spawn(index)
            if self._stop.is_set():  # the event no longer waits: look again after POLL
                time.sleep(self.POLL)
            else:
                self._stop.wait(self.POLL)
        if self._refusal is not None:
            exit_with(self._role, *self._refusal)
        return EXIT_FAILED if self._failed else EXIT_OK

    def _reap(self) -> None:
        for index, slot in enumerate(self._slots):
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its code is lost
                pid, status = slot.pid, 1 << 8
            if pid == 0:
                continue
            slot.pid = None
            if self._reaped is not None:
                self._reaped(pid)
            self._exited(index, os.waitstatus_to_exitcode(status))

    def _exited(self, index: int, code: int) -> None:
        slot = self._slots[index]
        ran = time.monotonic() - slot.started
        if self._stop.is_set():
            if code not in (0, -signal.SIGTERM):
                self._failed = True
                log.warning("%s stopped with %s", self._what, describe_exit(code))
            else:
                log.info("%s stopped (%s)", self._what, describe_exit(code))
            return
        if ran >= self.STABLE_AFTER:
            slot.backoff.reset()
        if code == EXIT_REFUSED:
            slot.refusals += 1
            if slot.refusals >= self.GIVE_UP_AFTER:
                self._refusal = (
                    f"{self._what} refused to start {slot.refusals} times in a row (a setting or"
                    f" its plan, {describe_exit(code)}); restarting cannot fix that, giving up",
                    EXIT_REFUSED,
                )
                self._stop.set()
                return
        else:
            slot.refusals = 0
        slot.unreachable = slot.unreachable + 1 if code == EXIT_UNREACHABLE else 0
        delay = slot.backoff.next()
        slot.due = time.monotonic() + delay
        cause = f"{describe_exit(code)} after {ran:.1f}s"
        if slot.unreachable:
            log.warning(
                "%s could not reach a dependency at boot (%s, %d time(s) in a row);"
                " restarting in %.1fs",
                self._what,
                cause,
                slot.unreachable,
                delay,
            )
            count_unreachable(self._role)
        else:
            log.warning("%s exited (%s); restarting in %.1fs", self._what, cause, delay)
        count_restart(self._role, cause)
