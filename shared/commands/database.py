"""`settle migrate`, `settle seed` and `settle budget`: the schema, the demo data and the
connection plan."""

from __future__ import annotations

import argparse

from shared.commands import Subparsers
from shared.config import Settings
from shared.db.migrate import migrate, session_defaults
from shared.db.pool import connect_once, pool_timeouts
from shared.ledger.seed import seed_demo
from shared.runtime.boot import boot_check, load_settings, plan_or_exit


def register(sub: Subparsers) -> None:
    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("seed", help="create the demo users and accounts").set_defaults(func=cmd_seed)
    sub.add_parser("budget", help="print the connection budget plan").set_defaults(func=cmd_budget)


def migrate_schema(settings: Settings) -> list[str]:
    """Apply the migrations over a session of Postgres's own (DATABASE_DIRECT_URL when set);
    behind PgBouncer, also give the role the pools' timeouts (over DATABASE_URL, as the role
    PgBouncer logs in as). Returns the migrations applied; raises the driver's errors."""
    with connect_once(settings, "migrate", session=True) as conn:
        applied = migrate(conn)
    if settings.pooled:
        with connect_once(settings, "migrate") as conn:
            session_defaults(conn, pool_timeouts(settings))
    return applied


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings("migrate")
    boot_check(settings, "migrate")
    applied = migrate_schema(settings)
    print(
        f"settle migrate: applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else " (schema up to date)")
    )
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = load_settings("seed")
    boot_check(settings, "seed")
    migrate_schema(settings)
    with connect_once(settings, "seed") as conn:
        demo = seed_demo(conn)
    print(
        f"settle seed: demo users {demo.alice_user_id} (account {demo.alice_account_id})"
        f" and {demo.bob_user_id} (account {demo.bob_account_id})"
    )
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    """Print the connection plan; exit 2 when it does not fit, 1 when Postgres is needed
    (no DB_CONNECTION_BUDGET) but unreachable."""
    print(plan_or_exit(load_settings("budget"), "budget").table())
    return 0
