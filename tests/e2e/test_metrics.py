"""`/metrics` of real processes: two forked web processes and a dramatiq worker set, their
series added up from prometheus-client's multiprocess files, after real traffic; and their
log lines, which are JSON off a terminal."""

from __future__ import annotations

import http.client
import json
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from shared.ledger import auth
from tests.e2e.conftest import Service
from tests.e2e.processes import Process, descendants
from tests.helpers import make_account, make_user, wait_until

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def request(
    port: int,
    method: str,
    path: str,
    *,
    key: str | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (so that either web process may take it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every label set that includes `labels`."""
    return sum(
        v
        for (sample, sample_labels), v in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def scrape(port: int, key: str) -> Samples:
    status, headers, body = request(port, "GET", "/metrics", key=key)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return parse(body.decode())


def requests_per_process(web_dir: Path) -> dict[str, float]:
    """Requests each web process counted, read from its own file."""
    counted = {}
    for path in sorted(web_dir.glob("counter_*.db")):
        families = MultiProcessCollector.merge([str(path)], accumulate=False)
        counted[path.name] = sum(
            s.value
            for family in families
            for s in family.samples
            if s.name == "settle_http_requests_total"
        )
    return counted


def json_lines(process: Process) -> list[dict[str, object]]:
    lines = process.log_path.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines if line.strip()]
    for line in parsed:
        assert {"time", "level", "role", "pid", "event"} <= set(line), line
    return parsed


def test_metrics_add_up_across_both_web_processes_and_include_the_workers(
    service: Service, db: psycopg.Connection, operator_key: str
) -> None:
    metrics_dir = Path(service.env["METRICS_DIR"])
    service.env.pop("LOG_FORMAT", None)  # auto: the logs go to files, so JSON
    web = service.start_web()
    worker = service.start_worker()
    port = service.port
    treasury, account = make_account(db, treasury=True), make_account(db)
    user = make_user(db)
    user_key = auth.create_key(db, user_id=user).key

    before = scrape(port, operator_key)
    calls: list[tuple[str, str, object]] = [("GET", f"/users/{user}", None)] * 60
    calls += [("GET", "/no/such/path", None)] * 6
    calls += [
        ("POST", "/transfers", {"from_account_id": treasury, "to_account_id": account, "amount": 1})
    ] * 12

    def send(call: tuple[str, str, object]) -> int:
        method, path, body = call
        extra = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
        return request(port, method, path, key=operator_key, body=body, headers=extra)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, calls))
    assert statuses == [200] * 60 + [404] * 6 + [202] * 12

    def settled() -> bool:
        row = db.execute(
            "SELECT count(*) FROM transfers WHERE to_account_id = %s AND status = 'settled'",
            (account,),
        ).fetchone()
        return row is not None and row[0] == 12

    wait_until(settled, timeout=30, what="the 12 transfers are settled")
    # The worker's series are published when each message is done, before the next scrape.
    after = scrape(port, operator_key)

    # Every request sent was counted once, whichever process served it: the ones above and
    # the first scrape (counted after its own answer was rendered).
    sent = len(calls) + 1
    counted = total(after, "settle_http_requests_total") - total(
        before, "settle_http_requests_total"
    )
    assert counted == sent
    name = "settle_http_requests_total"
    assert (
        value(after, name, route="/users/{user_id}", method="GET", status="200")
        - value(before, name, route="/users/{user_id}", method="GET", status="200")
        == 60
    )
    assert value(after, name, route="unmatched", method="GET", status="404") >= 6
    assert value(after, name, route="/transfers", method="POST", status="202") >= 12
    assert not [
        labels for (sample, labels) in after if dict(labels).get("route", "{").startswith("/no")
    ]
    per_process = requests_per_process(metrics_dir / "web")
    assert len([n for n in per_process.values() if n > 0]) == 2, per_process

    # Pool gauges: two web processes of WEB_THREADS connections, two worker processes of
    # WORKER_THREADS, all idle now; counters present even at zero.
    threads = int(service.env["WEB_THREADS"])
    web_size = value(after, "settle_db_pool_size", role="web")
    assert 2 <= web_size <= 2 * threads
    assert 0 <= value(after, "settle_db_pool_available", role="web") <= web_size
    assert value(after, "settle_db_pool_requests_waiting", role="web") == 0
    assert ("settle_db_pool_wait_seconds_total", (("role", "web"),)) in after
    assert value(after, "settle_db_pool_connections_lost_total", role="web") == 0
    worker_size = value(after, "settle_db_pool_size", role="worker")
    assert worker_size == int(service.env["WORKER_PROCESSES"]) * int(service.env["WORKER_THREADS"])
    assert ("settle_web_queue_depth", ()) in after

    # The workers' own series, served by the web's /metrics of the same host.
    processed = "settle_worker_messages_processed_total"
    # Web sends its transfers in batch messages (as many as it grouped, at most 12).
    assert value(after, processed, actor="settle_transfers") >= 1
    assert (
        value(after, "settle_transfer_settle_latency_seconds_count")
        - value(before, "settle_transfer_settle_latency_seconds_count")
        == 12
    )
    assert value(after, "settle_transfer_settle_latency_seconds_sum") > 0

    # The database-wide series, read once by the scraped process.
    assert value(after, "settle_transfers", status="settled") >= 12
    assert value(after, "settle_connections_leased", role="web") >= web_size
    assert value(after, "settle_connections_leased", role="worker") >= worker_size
    assert total(after, "settle_connections_planned") <= value(after, "settle_connection_budget")
    for state in ("ready", "delayed", "dead"):
        assert ("settle_queue_messages", (("queue", "transfers"), ("state", state))) in after

    # Operators only; request ids echoed or made.
    assert request(port, "GET", "/metrics")[0] == 401
    assert request(port, "GET", "/metrics", key=user_key)[0] == 401
    _, headers, _ = request(port, "GET", "/healthz", headers={"X-Request-Id": "trace-7"})
    assert headers["x-request-id"] == "trace-7"
    _, headers, _ = request(port, "GET", "/healthz", headers={"X-Request-Id": "no spaces"})
    assert headers["x-request-id"] != "no spaces" and len(headers["x-request-id"]) == 32

    assert web.stop() == 0
    assert worker.stop() == 0
    # Every line each process wrote is one JSON object (dramatiq's own lines included).
    web_lines, worker_lines = json_lines(web), json_lines(worker)
    assert {line["role"] for line in web_lines} == {"web"}
    assert len({line["pid"] for line in web_lines}) == 3  # the parent and its two children
    assert any("Worker process is ready" in str(line["event"]) for line in worker_lines)
    # The web processes' live gauges went with them; their counters stay.
    assert not list((metrics_dir / "web").glob("gauge_live*"))
    assert list((metrics_dir / "web").glob("counter_*.db"))


def test_a_web_process_killed_and_replaced_is_counted_as_a_restart(
    service: Service, operator_key: str
) -> None:
    web = service.start_web()
    port = service.port
    before = value(scrape(port, operator_key), "settle_process_restarts_total", role="web")
    children = sorted(descendants(web.pid))
    assert len(children) == int(service.env["WEB_PROCESSES"])
    os.kill(children[0], signal.SIGKILL)

    def replaced() -> bool:
        now = descendants(web.pid)
        return children[0] not in now and len(now) == len(children)

    wait_until(replaced, timeout=30, what="the killed web process is replaced")

    def counted() -> Samples | None:
        found = scrape(port, operator_key)
        return found if value(found, "settle_process_restarts_total", role="web") > before else None

    after = wait_until(counted, timeout=30, what="the restart is counted")
    assert value(after, "settle_process_restarts_total", role="web") == before + 1
