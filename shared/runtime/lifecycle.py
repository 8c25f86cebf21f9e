"""The process runtime: every step a Settle process takes from start to exit, written once.

`settle web`, `settle worker`, `settle sweeper`, the dramatiq worker processes and the other
commands call these steps; none re-implements one:

- `load_settings`: the settings, or one line naming the bad variable and exit 2;
- `boot_check`: Postgres `SELECT 1` and the broker in use (Redis `PING`, or an AMQP
  connection to RabbitMQ), or one line and exit 1 (the one-shot commands); an undeclared
  transaction pooler in front of Postgres, one line naming DB_POOLER and exit 2;
- `plan_or_exit`: the connection plan, or its arithmetic on one line and exit 2;
- `wait_for_boot`: a supervisor's boot check and plan, tried again with backoff for as long
  as a dependency is unreachable (a supervisor under honcho must not exit: honcho would stop
  every other process with it); only a refused setting or plan ends it, exit 2;
- `leased_pool`: a lease on the connection budget and the pool it sizes, in the one safe
  order (see its docstring);
- `stop_signals`: SIGTERM/SIGINT handlers that set a `StopRequest`;
- `Supervisor`: children restarted with exponential backoff when they crash or cannot reach
  a dependency at boot, for as long as that lasts; given up on only when they keep refusing
  a setting or their plan;
- `exit_with`: the one-line exit (`settle <role>: <message>` on stderr, then the code).

Exit codes: 0 done or stopped on request; 1 a step failed or a dependency is unreachable
(one-shot commands); 2 a bad setting or a plan that does not fit. A child of a supervisor
that fails at boot exits 2 (refused) or 3 (a dependency is unreachable): dramatiq reports a
worker process killed by a signal as exit 1, so 1 cannot also mean "failed at boot" (3 is
dramatiq's own code for a broker connection that failed at boot).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

import psycopg

from shared.broker.factory import check_broker
from shared.config import Settings
from shared.db.budget import BudgetExceeded, Plan, capacity, make_plan
from shared.db.leases import LeaseKeeper
from shared.db.pool import ElasticPool, application_name, check_postgres, create_pool
from shared.db.pooler import check_pooler
from shared.errors import DependencyDown, InvalidSetting, PoolerUndeclared, first_line
from shared.runtime import logs

log = logging.getLogger("settle.runtime")

EXIT_OK = 0
#: A step failed, or a dependency is unreachable.
EXIT_FAILED = 1
#: A bad setting, or a connection plan that does not fit: restarting cannot help.
EXIT_REFUSED = 2
#: A supervised child could not reach a dependency at boot (see the module docstring).
EXIT_UNREACHABLE = 3

#: The signals that ask a process to stop: SIGTERM from honcho or a supervisor, SIGINT from a
#: terminal.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def configure_logging(role: str) -> str:
    """Logging for this process root (see `shared.runtime.logs`), in LOG_FORMAT; returns the
    format chosen, for children whose stderr is not this one's terminal. A malformed
    LOG_FORMAT exits 2 with one line naming it, as `load_settings` would."""
    try:
        fmt = str(Settings.one("log_format"))
    except InvalidSetting as exc:
        exit_with(role, exc.message, EXIT_REFUSED)
    return logs.configure(role, fmt)


def exit_with(role: str, message: str, code: int) -> NoReturn:
    """End the process with one line, `settle <role>: <message>`, on stderr and `code`."""
    print(f"settle {role}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def takes_no_arguments(role: str, doc: str | None, argv: list[str] | None) -> None:
    """Refuse arguments to a process command (`settle web extra` exits 2 with its usage);
    `--help` prints the process's description (`doc`'s first paragraph) and exits 0."""
    description = (doc or "").split("\n\n", 1)[0].strip() or None
    argparse.ArgumentParser(prog=f"settle {role}", description=description).parse_args(argv)


def load_settings(role: str) -> Settings:
    """Settings from the environment, or exit 2 with one line naming the bad variable."""
    try:
        return Settings.from_env()
    except InvalidSetting as exc:
        exit_with(role, exc.message, EXIT_REFUSED)


def boot_check(settings: Settings, role: str) -> None:
    """`SELECT 1` on Postgres and a check of the broker in use (Redis `PING`, or an AMQP
    connection to RabbitMQ), or exit 1 with one line naming the one that cannot be reached;
    a transaction pooler in front of DATABASE_URL that DB_POOLER does not declare is a
    refused setting (`shared.db.pooler`): exit 2 with one line naming DB_POOLER."""
    name = application_name(f"{role}-boot", settings.hostname)
    try:
        check_postgres(settings.database_url, name=name)
        check_pooler(settings, name=name)
        check_broker(settings.message_broker_url)
    except DependencyDown as exc:
        exit_with(role, exc.message, EXIT_FAILED)
    except PoolerUndeclared as exc:
        exit_with(role, exc.message, EXIT_REFUSED)


def make_plan_for(settings: Settings) -> Plan:
    """The connection plan for `settings`. Raises `BudgetExceeded` (the arithmetic on one
    line) when it does not fit, and `DependencyDown` when the budget must be read from a
    Postgres that cannot be reached."""
    try:
        return make_plan(settings, capacity(settings))
    except psycopg.Error as exc:
        raise DependencyDown(
            f"cannot read the connection budget from Postgres: {first_line(exc)}"
            " (set DB_CONNECTION_BUDGET to plan without a database)"
        ) from None


def plan_or_exit(settings: Settings, role: str) -> Plan:
    """The connection plan for `settings`, or exit 2 with the refusal line (exit 1 when the
    budget must be read from a Postgres that cannot be reached)."""
    try:
        return make_plan_for(settings)
    except BudgetExceeded as exc:
        exit_with(role, exc.message, EXIT_REFUSED)
    except DependencyDown as exc:
        exit_with(role, exc.message, EXIT_FAILED)


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


def wait_for_boot(settings: Settings, role: str, stop: StopRequest) -> Plan | None:
    """A supervisor's boot: `SELECT 1` on Postgres, a check of the broker, and the connection
    plan (and the check that DB_POOLER declares any transaction pooler in front of Postgres).
    A dependency that cannot be reached is transient (a failover, a broker restart):
    each attempt is logged (`Postgres unreachable at ...; trying again in 4.0s (attempt
    3)`) and counted (`on_unreachable`), and the next comes after the supervisors' backoff
    (up to RESTART_BACKOFF_MAX_SECONDS), for as long as it takes. A plan that does not fit,
    or an undeclared pooler, exits 2 at once with its one line. Returns None when a stop is
    requested meanwhile (the caller exits 0, having started nothing)."""
    backoff = Backoff(Supervisor.BACKOFF_BASE, settings.restart_backoff_max_seconds)
    name = application_name(f"{role}-boot", settings.hostname)
    while not stop.is_set():
        try:
            check_postgres(settings.database_url, name=name)
            check_pooler(settings, name=name)
            check_broker(settings.message_broker_url)
            plan = make_plan_for(settings)
        except (BudgetExceeded, PoolerUndeclared) as exc:
            exit_with(role, exc.message, EXIT_REFUSED)
        except DependencyDown as exc:
            delay = backoff.next()
            log.warning(
                "%s; trying again in %.1fs (attempt %d)", exc.message, delay, backoff.failures
            )
            _unreachable[role] += 1
            for listener in list(_unreachable_listeners):
                listener(role)
            stop.wait(delay)
            continue
        if backoff.failures:
            log.info("dependencies reachable after %d failed attempt(s)", backoff.failures)
        return plan
    return None


@contextlib.contextmanager
def leased_pool(
    settings: Settings,
    role: str,
    plan: Plan,
    *,
    stopping: Callable[[], bool],
    timeout: float | None = None,
    open_timeout: float = 10.0,
) -> Iterator[ElasticPool | None]:
    """This process's pool, sized by its lease on the connection budget, for the `with` body.

    The order is what keeps the connections all processes hold within the budget:
    1. register the lease and wait until at least one connection is granted (yields None,
       holding nothing, if `stopping()` turns true meanwhile: the caller exits cleanly);
    2. open the pool at the granted size, and only then
    3. heartbeat the lease from a thread that resizes the pool as the grant moves;
    4. on the way out stop the heartbeat (nothing resizes a closing pool), close the pool,
       and release the lease last. Released first, the lease would let other processes grow
       into connections this one still holds.
    A lease that cannot be taken, or a pool that cannot connect within `open_timeout` (then
    closed and its lease released), raises `DependencyDown`. `timeout` is how long a borrower
    waits for a connection (default POOL_TIMEOUT).
    """
    wanted = {r.role: r for r in plan.roles}[role].pool_size
    lease = LeaseKeeper(settings, role, wanted=wanted, budget=plan.capacity.available)
    try:
        size = lease.acquire(stopping=stopping)
    except psycopg.Error as exc:  # Postgres went away since the plan was read
        raise DependencyDown(
            f"Postgres unreachable: the {role} lease could not be taken: {first_line(exc)}"
        ) from None
    if size == 0:
        yield None
        return
    pool = create_pool(settings, role, size=size, timeout=timeout)
    try:
        pool.open(wait=True, timeout=open_timeout)
    except Exception:
        pool.close()
        lease.close()
        raise DependencyDown(
            f"Postgres unreachable: the {role} pool could not connect within {open_timeout:g}s"
        ) from None
    lease.keep(pool)
    try:
        yield pool
    finally:
        lease.stop_heartbeat()
        pool.close()
        lease.close()


class StopRequest:
    """Set once a stop signal arrives (or by hand); callbacks registered with `on_set` run
    then, in the signal handler, e.g. to forward the stop or wake an event loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        first = not self._event.is_set()
        self._event.set()
        if first:
            for callback in list(self._callbacks):
                callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_set(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the stop is requested (at once if it already was)."""
        self._callbacks.append(callback)
        if self._event.is_set():
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


def describe_exit(code: int) -> str:
    """`exit 3`, or `killed by SIGKILL` for a negative code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


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
            _unreachable[self._role] += 1
            for unreachable_listener in list(_unreachable_listeners):
                unreachable_listener(self._role)
        else:
            log.warning("%s exited (%s); restarting in %.1fs", self._what, cause, delay)
        _restarts[self._role] += 1
        for listener in list(_restart_listeners):
            listener(self._role, cause)


def supervise(
    role: str,
    what: str,
    start: Callable[[int], int],
    *,
    stop: StopRequest,
    slots: int = 1,
    reaped: Callable[[int], object] | None = None,
    backoff_cap: float | None = None,
) -> int:
    """Run a `Supervisor` (see there) and return its exit code. `reaped(pid)` is called for
    every child that exited, before it is restarted; `backoff_cap` is the longest wait
    between two restarts (RESTART_BACKOFF_MAX_SECONDS)."""
    return Supervisor(
        role, what, start, stop=stop, slots=slots, reaped=reaped, backoff_cap=backoff_cap
    ).run()
