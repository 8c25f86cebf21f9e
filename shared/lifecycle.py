"""What every process does at boot: configure logging and check its dependencies.

`boot_check` ends the process with exit code 1 and one line on stderr when Postgres or Redis
cannot be reached, so an operator sees the cause instead of a traceback.
"""

from __future__ import annotations

import logging
import sys

from shared.db import check_postgres, check_redis
from shared.errors import DependencyDown, InvalidSetting
from shared.settings import Settings


def configure_logging(role: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


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
        check_postgres(settings.database_url)
        check_redis(settings.redis_url)
    except DependencyDown as exc:
        print(f"settle {role}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
