"""A process's boot, before it serves or consumes: its logging, its settings, Postgres and the
broker reachable, and the connection plan.

- `load_settings`: the settings, or one line naming the bad variable and exit 2;
- `boot_check`: Postgres `SELECT 1` and the broker in use (Redis `PING`, or an AMQP
  connection to RabbitMQ), or one line and exit 1 (the one-shot commands); an undeclared
  transaction pooler in front of Postgres, one line naming DB_POOLER and exit 2;
- `plan_or_exit`: the connection plan, or its arithmetic on one line and exit 2;
- `wait_for_boot`: a supervisor's boot check and plan, tried again with backoff for as long
  as a dependency is unreachable (a supervisor under honcho must not exit: honcho would stop
  every other process with it); only a refused setting or plan ends it, exit 2.
"""

from __future__ import annotations

import argparse
import logging

import psycopg

from shared.broker.factory import check_broker
from shared.config import Settings
from shared.db.budget import BudgetExceeded, Plan, capacity, make_plan
from shared.db.pool import application_name, check_postgres
from shared.db.pooler import check_pooler
from shared.errors import DependencyDown, InvalidSetting, PoolerUndeclared, first_line
from shared.runtime import logs
from shared.runtime.exits import EXIT_FAILED, EXIT_REFUSED, exit_with
from shared.runtime.signals import StopRequest
from shared.runtime.supervisor import Backoff, Supervisor, count_unreachable

log = logging.getLogger("settle.runtime")


def configure_logging(role: str) -> str:
    """Logging for this process root (see `shared.runtime.logs`), in LOG_FORMAT; returns the
    format chosen, for children whose stderr is not this one's terminal. A malformed
    LOG_FORMAT exits 2 with one line naming it, as `load_settings` would."""
    try:
        fmt = str(Settings.one("log_format"))
    except InvalidSetting as exc:
        exit_with(role, exc.message, EXIT_REFUSED)
    return logs.configure(role, fmt)


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


def check_dependencies(settings: Settings, role: str) -> None:
    """`SELECT 1` on Postgres (as `settle:<role>-boot:...`), the check that DB_POOLER declares
    any transaction pooler in front of it, and a check of the broker in use. Raises
    `DependencyDown` naming the one that cannot be reached, `PoolerUndeclared`."""
    name = application_name(f"{role}-boot", settings.hostname)
    check_postgres(settings.database_url, name=name)
    check_pooler(settings, name=name)
    check_broker(settings.message_broker_url)


def boot_check(settings: Settings, role: str) -> None:
    """`SELECT 1` on Postgres and a check of the broker in use (Redis `PING`, or an AMQP
    connection to RabbitMQ), or exit 1 with one line naming the one that cannot be reached;
    a transaction pooler in front of DATABASE_URL that DB_POOLER does not declare is a
    refused setting (`shared.db.pooler`): exit 2 with one line naming DB_POOLER."""
    try:
        check_dependencies(settings, role)
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
    while not stop.is_set():
        try:
            check_dependencies(settings, role)
            plan = make_plan_for(settings)
        except (BudgetExceeded, PoolerUndeclared) as exc:
            exit_with(role, exc.message, EXIT_REFUSED)
        except DependencyDown as exc:
            delay = backoff.next()
            log.warning(
                "%s; trying again in %.1fs (attempt %d)", exc.message, delay, backoff.failures
            )
            count_unreachable(role)
            stop.wait(delay)
            continue
        if backoff.failures:
            log.info("dependencies reachable after %d failed attempt(s)", backoff.failures)
        return plan
    return None
