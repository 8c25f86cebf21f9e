"""Stop signals: SIGTERM from honcho or a supervisor, SIGINT from a terminal, turned into a
`StopRequest` that the process's loops wait on, and held back around a fork."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

#: The signals that ask a process to stop: SIGTERM from honcho or a supervisor, SIGINT from a
#: terminal.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class StopRequest:
    """Set once a stop signal arrives (or by hand); callbacks registered with `on_set` run
    then, in the signal handler, e.g. to forward the stop or wake an event loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._requested = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        # A plain flag, tested and set before the event: a second signal whose handler runs
        # while this one is inside `Event.set` (holding the event's lock, which is not
        # reentrant) returns here instead of waiting for that lock forever.
        if self._requested:
            return
        self._requested = True
        self._event.set()
        for callback in list(self._callbacks):
            callback()

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_set(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the stop is requested (at once if it already was)."""
        self._callbacks.append(callback)
        if self._requested:
            callback()


@contextlib.contextmanager
def stop_signals(
    signals: Iterable[int] = STOP_SIGNALS, *, chain: bool = False
) -> Iterator[StopRequest]:
    """Handlers for `signals` that set the yielded `StopRequest`, restored on exit.

    Install them first thing, so that a stop during the boot checks is a clean stop too. The
    signals are unblocked once the handlers are in place (a forked child starts with them
    blocked, see `blocked_stop_signals`). With `chain`, the handler that was installed
    before runs as well (dramatiq's worker process reads its own flag once booted).
    """
    stop = StopRequest()
    chosen = set(signals)
    previous = {signum: signal.getsignal(signum) for signum in chosen}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        before = previous.get(signum)
        if chain and callable(before):
            before(signum, frame)

    for signum in chosen:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, chosen)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def blocked_stop_signals() -> Iterator[None]:
    """Stop signals held back for the `with` body. Around a fork: a child hit before it has
    handlers of its own would run its parent's (or die of the default action)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
