"""Start `make run` with no server URLs, read the demo API keys it prints, submit one transfer
with Alice's key, see it settle, SIGTERM, exit 0.

With SMOKE_BROKER=rabbitmq, the same on RabbitMQ (SMOKE_RABBITMQ_URL, default the local
node as guest) in a vhost made for the run with rabbitmqctl: `make run` must then start no
Redis, and /readyz must report RabbitMQ."""

from __future__ import annotations

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
import urllib.request

import psutil

PORT = int(os.environ.get("SMOKE_PORT", "8765"))
BASE = f"http://127.0.0.1:{PORT}"


def request(
    method: str,
    path: str,
    body: dict | None = None,
    key: str | None = None,
    api_key: str | None = None,
) -> dict:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def wait_until(what: str, check, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"smoke: timed out waiting for {what}")


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
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")
    }
    env.update(extra, PORT=str(PORT))
    data_dir = tempfile.mkdtemp(prefix="settle-smoke-")
    with open(os.path.join(data_dir, "run.log"), "w+") as log:
        proc = subprocess.Popen(
            ["make", "run", "RUN_ARGS=--data-dir " + data_dir],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            settle_one_transfer(log, broker)
        finally:
            code = stop(proc)
            log.seek(0)
            output = log.read()
    shutil.rmtree(data_dir, ignore_errors=True)
    if code != 0:
        print(output)
        raise SystemExit(f"smoke: make run exited {code} after SIGTERM")
    if broker == "rabbitmq" and "Valkey" in output:
        print(output)
        raise SystemExit("smoke: make run started a Redis although BROKER_URL names RabbitMQ")
    print(f"smoke: make run on {broker} stopped cleanly (exit 0)")


def demo_keys(log) -> dict[str, str]:
    """The demo API keys `make run` printed: {"operator": ..., "alice": ...}."""
    with open(log.name) as printed:
        text = printed.read()
    found = dict(re.findall(r"^  (operator|Alice's) key: +(settle_\S+)$", text, re.MULTILINE))
    if len(found) < 2:
        return {}
    return {"operator": found["operator"], "alice": found["Alice's"]}


def settle_one_transfer(log, broker: str) -> None:
    ready = wait_until("/readyz", lambda: request("GET", "/readyz")["data"], 90)
    assert ready == {"status": "ready", "postgres": "ok", broker: "ok"}, ready
    keys = wait_until("the demo API keys in the output", lambda: demo_keys(log), 10)
    assert isinstance(keys, dict)
    try:
        request("GET", "/accounts/2")
        raise SystemExit("smoke: GET /accounts/2 without an API key was not refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401, exc.code
    body = {"from_account_id": 2, "to_account_id": 3, "amount": 1250}
    transfer = request("POST", "/transfers", body, key="smoke-1", api_key=keys["alice"])["data"]
    print(f"smoke: transfer {transfer['id']} accepted with Alice's key ({transfer['status']})")

    def finished() -> dict | None:
        current = request("GET", f"/transfers/{transfer['id']}", api_key=keys["alice"])["data"]
        return None if current["status"] == "pending" else current

    final = wait_until("the transfer to settle", finished, 30)
    assert isinstance(final, dict) and final["status"] == "settled", final
    print(f"smoke: transfer {final['id']} settled")
    bob = request("GET", "/accounts/3", api_key=keys["operator"])["data"]
    print(f"smoke: the operator key reads Bob's account (balance {bob['balance']})")


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
