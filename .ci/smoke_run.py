"""Start `make run` exactly as a newcomer does (no PORT, no server URLs), then do what its
banner says: run every curl line it prints (each must answer 2xx; the transfer's id from
the POST's answer goes where the banner says), see the transfer settle, run `settle status`
with the banner's export line, and log into the dashboard it names with the printed
operator key (the login form, its CSRF token, the dashboard page). SIGTERM, exit 0.

With SMOKE_BROKER=rabbitmq, the same on RabbitMQ (SMOKE_RABBITMQ_URL, default the local
node as guest) in a vhost made for the run with rabbitmqctl: `make run` must then start no
Redis, and /readyz must report RabbitMQ."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil

#: What a newcomer's shell has: no Settle variable at all.
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SHELL", "TERM")
#: Where the README says `make run` serves.
README_BASE = "http://127.0.0.1:8000"


def fail(message: str, output: str = "") -> None:
    if output:
        print(output)
    raise SystemExit(f"smoke: {message}")


def wait_until(what: str, check, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    fail(f"timed out waiting for {what}")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "--quiet", *args], check=True, capture_output=True)


def main() -> None:
    if os.environ.get("SMOKE_BROKER") != "rabbitmq":
        return smoke({})
    server = os.environ.get("SMOKE_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    vhost = f"settle-smoke-{os.getpid()}-{int(time.time())}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        smoke({"BROKER_URL": server.rstrip("/") + "/" + vhost}, broker="rabbitmq")
    finally:
        rabbitmqctl("delete_vhost", vhost)


def smoke(extra: dict[str, str], broker: str = "redis") -> None:
    env = {k: v for k, v in os.environ.items() if k in KEPT}
    env.update(extra)
    data_dir = tempfile.mkdtemp(prefix="settle-smoke-")
    log_path = os.path.join(data_dir, "run.log")
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            ["make", "run", "RUN_ARGS=--data-dir " + data_dir],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            lines = wait_until("the banner", lambda: banner(log_path), 120)
            assert isinstance(lines, list)
            follow_the_banner(lines, env, broker)
        except BaseException:
            log.seek(0)
            print(log.read())
            raise
        finally:
            code = stop(proc)
            log.seek(0)
            output = log.read()
    shutil.rmtree(data_dir, ignore_errors=True)
    if code != 0:
        fail(f"make run exited {code} after SIGTERM", output)
    if broker == "rabbitmq" and "Valkey" in output:
        fail("make run started a Redis although BROKER_URL names RabbitMQ", output)
    print(f"smoke: make run on {broker} stopped cleanly (exit 0)")


def banner(log_path: str) -> list[str] | None:
    """The lines `make run` printed from "Settle is running at" on, once complete."""
    with open(log_path) as printed:
        lines = printed.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Settle is running at ")]
    if not starts:
        return None
    shown = lines[starts[0] :]
    return shown if any(line.rstrip().endswith("settle status") for line in shown) else None


def field(lines: list[str], pattern: str) -> str:
    found = re.search(pattern, "\n".join(lines), re.MULTILINE)
    if found is None:
        fail(f"the banner has no line matching {pattern!r}", "\n".join(lines))
    return found.group(1)


def curl(line: str) -> tuple[int, str]:
    """Run a curl line as a shell does; (HTTP status, body)."""
    done = subprocess.run(
        ["bash", "-c", line + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        fail(f"curl exited {done.returncode}: {line}\n{done.stderr}")
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def follow_the_banner(lines: list[str], env: dict[str, str], broker: str) -> None:
    base = field(lines, r"^Settle is running at (\S+)")
    if base != README_BASE:
        fail(f"make run serves at {base}, the README says {README_BASE}", "\n".join(lines))
    operator = field(lines, r"^  operator key: +(settle_\S+)$")
    alice = field(lines, r"^  Alice's key: +(settle_\S+)$")
    if field(lines, r"^  dashboard: +(\S+)") != f"{base}/dashboard":
        fail("the banner's dashboard is not on the address it serves at", "\n".join(lines))
    if field(lines, r"^  metrics: +(\S+)") != f"{base}/metrics":
        fail("the banner's metrics are not on the address it serves at", "\n".join(lines))
    shown_broker = field(lines, r"^  broker: +(\S+)")
    if shown_broker != {"redis": "Redis", "rabbitmq": "RabbitMQ"}[broker]:
        fail(f"the banner names the broker {shown_broker}", "\n".join(lines))
    field(lines, r"^  database: +(\S+)")

    status, body = curl(f"curl -s {base}/readyz")
    ready = json.loads(body)["data"]
    if (status, ready) != (200, {"status": "ready", "postgres": "ok", broker: "ok"}):
        fail(f"/readyz answered {status} {ready}")
    status, _ = curl(f"curl -s {base}/accounts/2")
    if status != 401:
        fail(f"GET /accounts/2 without an API key answered {status}, not 401")

    transfer_id = None
    commands = [line.strip() for line in lines if line.startswith("  curl ")]
    for line in commands:
        if "<id from the answer above>" in line:
            if transfer_id is None:
                fail(f"no transfer id to put in: {line}")
            line = line.replace("<id from the answer above>", str(transfer_id))
        if "<" in line.split(" -d ")[0]:
            fail(f"a curl line the banner prints cannot run as printed: {line}")
        status, body = curl(line)
        if not 200 <= status < 300:
            fail(f"{line}\nanswered {status}: {body[:500]}")
        if "-X POST" in line and "/transfers" in line:
            transfer_id = json.loads(body)["data"]["id"]
        url = next(w.strip("'") for w in line.split() if w.strip("'").startswith("http"))
        print(f"smoke: {status} from {'POST' if '-X POST' in line else 'GET'} {url}")
    if len(commands) < 5 or transfer_id is None:
        fail("the banner prints fewer curl lines than expected", "\n".join(lines))

    def settled() -> bool:
        _, body = curl(f"curl -s -H 'Authorization: Bearer {alice}' {base}/transfers/{transfer_id}")
        return json.loads(body)["data"]["status"] != "pending"

    wait_until("the transfer to settle", settled, 30)
    print(f"smoke: transfer {transfer_id} settled")

    export = next((line.strip() for line in lines if line.startswith("  export ")), None)
    command = next(line.strip() for line in lines if line.rstrip().endswith("settle status"))
    script = f"{export}; {command}" if export else command
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"`{script}` exited {done.returncode}", done.stdout + done.stderr)
    print("smoke: settle status reaches the servers with the banner's export line")

    log_into_the_dashboard(base, operator)


def log_into_the_dashboard(base: str, operator_key: str) -> None:
    """A real login: the form (and its login cookie), the key posted with the form's CSRF
    token, the session cookie, then the dashboard page."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with browser.open(f"{base}/dashboard/login", timeout=10) as resp:
        form = resp.read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    if token is None:
        fail("the login form carries no CSRF token", form)
    data = urllib.parse.urlencode({"csrf": token.group(1), "key": operator_key}).encode()
    try:
        with browser.open(f"{base}/dashboard/login", data=data, timeout=10) as resp:
            page, url = resp.read().decode(), resp.geturl()
    except urllib.error.HTTPError as exc:
        fail(f"logging in answered {exc.code}", exc.read().decode(errors="replace"))
    if not url.endswith("/dashboard") or "/dashboard/logout" not in page:
        fail(f"logging in did not land on the dashboard ({url})", page[:2000])
    print("smoke: logged into /dashboard with the printed operator key")


def stop(proc: subprocess.Popen) -> int:
    # SIGTERM the service itself (make's child, `settle run`), as a process manager would;
    # make then exits with the service's code. (Signalled directly, GNU make re-raises the
    # signal on itself and reports that instead of its child's exit code.)
    service = psutil.Process(proc.pid).children()
    for child in service or [psutil.Process(proc.pid)]:
        child.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -9


if __name__ == "__main__":
    sys.exit(main())
