"""What every process does at boot: configure logging, check its dependencies, and check
that the connection plan fits.

`boot_check` ends the process with exit code 1 and one line on stderr when Postgres or Redis
cannot be reached; `plan_or_exit` ends it with exit code 2 and the arithmetic when the
configured processes need more connections than the budget allows.
"""

from __future__ import annotations

import os
import sys

import psycopg

from shared.db.budget import BudgetExceeded, Plan, capacity, make_plan
from shared.db.pool import application_name, check_postgres, check_redis
from shared.errors import DependencyDown, InvalidSetting, first_line
from shared.runtime import logs
from shared.runtime.settings import Settings


def configure_logging(role: str) -> str:
    """Logging for this process root (see `shared.runtime.logs`), in LOG_FORMAT; returns the
    format chosen, for children whose stderr is not this one's terminal."""
    return logs.configure(role, os.environ.get("LOG_FORMAT", "auto"))


def load_settings(role: str) -> Settings:
    """Settings from the environment, or exit code 2 with one line naming the bad variable."""
    try:
        return Settings.from_env()
    except InvalidSetting as exc:
        print(f"settle {role}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


def boot_check(settings: Settings, role: str) -> None:
    """`SELECT 1` on Postgres and `PING` on Redis, or exit code 1 with one clear line."""
    try:
        check_postgres(settings.database_url, name=application_name(settings, f"{role}-boot"))
        check_redis(settings.redis_url)
    except DependencyDown as exc:
        print(f"settle {role}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None


def plan_or_exit(settings: Settings, role: str) -> Plan:
    """The connection plan for `settings`, or exit 2 with the refusal line (exit 1 when the
    budget must be read from a Postgres that cannot be reached)."""
    try:
        return make_plan(settings, capacity(settings))
    except BudgetExceeded as exc:
        print(f"settle {role}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except psycopg.Error as exc:
        reason = first_line(exc)
        print(
            f"settle {role}: cannot read the connection budget from Postgres: {reason}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
