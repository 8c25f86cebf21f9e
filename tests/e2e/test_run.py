"""`settle run` (what `make run` runs: the Procfile under honcho) as a newcomer starts it: no
PORT, no server URLs, so on embedded Postgres and Valkey.

It serves where its banner says (PORT unset: 8000, although honcho hands out 5000 when it
picks the ports), every curl line the banner prints succeeds as printed, and its `export`
line lets `settle status` reach the embedded servers. Web's `/metrics`, read with
prometheus-client's own parser, carries the worker processes' series with counts that match
the transfers the workers settled and failed, and the live processes of every role.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.processes import ROOT, Process, start
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

#: What a newcomer's shell has; every Settle variable is left out.
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SHELL")
#: Where the README says `make run` serves when PORT is unset.
EXPECTED_BASE = "http://127.0.0.1:8000"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under the repository, as `make run`'s .settle/ is (the embedded Postgres runs as a user
    # of its own and needs to reach it).
    folder = ROOT / ".settle" / "test-servers" / f"run-{uuid.uuid4().hex[:8]}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def newcomer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEPT}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def banner(run: Process) -> list[str]:
    run.wait_for_log("/settle status\n", timeout=90)  # the banner's last line
    lines = run.log_path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Settle is running at "))
    return lines[first:]


def curl(line: str) -> tuple[int, str]:
    """Run a curl line as a shell would; (HTTP status, body)."""
    done = subprocess.run(
        ["bash", "-c", line + " -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, (line, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus-client's own parser (which fails
    on anything Prometheus would refuse)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_settle_run_serves_where_its_banner_says_and_metrics_show_every_process(
    data_dir: Path, newcomer_env: dict[str, str], tmp_path: Path
) -> None:
    run = start("run", newcomer_env, tmp_path, "--data-dir", str(data_dir))
    try:
        lines = banner(run)
        base = lines[0].split()[4]
        assert base == EXPECTED_BASE, lines
        assert f"  dashboard: {base}/dashboard  " in "\n".join(lines)
        assert any(line.startswith(f"  metrics:   {base}/metrics  ") for line in lines)
        assert any(line.startswith("  broker:    Redis at redis://127.0.0.1:") for line in lines)
        operator = re.search(r"operator key: (\S+)", "\n".join(lines))
        alice = re.search(r"Alice's key:  (\S+)", "\n".join(lines))
        assert operator and alice

        # Every curl line, as printed (the transfer's id from the answer above put in).
        transfer_id = None
        ran = 0
        for line in (line.strip() for line in lines if line.startswith("  curl ")):
            if "<id from the answer above>" in line:
                assert transfer_id is not None
                line = line.replace("<id from the answer above>", str(transfer_id))
            status, body = curl(line)
            assert 200 <= status < 300, (line, status, body)
            if "-X POST" in line and "/transfers" in line:
                transfer_id = json.loads(body)["data"]["id"]
            ran += 1
        assert ran >= 6

        # Transfers as Alice to Bob, as the banner's POST line: ten that settle, one she
        # cannot afford.
        post = next(line for line in lines if "-X POST" in line)
        demo_body = json.loads(post.rsplit(" -d ", 1)[1].strip("'"))
        headers = f"-H 'Authorization: Bearer {alice.group(1)}'"
        ids = [transfer_id]
        for n, amount in enumerate([100] * 10 + [10**9]):
            body = json.dumps({**demo_body, "amount": amount})
            status, answer = curl(
                f"curl -s {headers} -X POST {base}/transfers -H 'Content-Type: application/json'"
                f" -H 'Idempotency-Key: run-{n}' -d '{body}'"
            )
            assert status == 202, answer
            ids.append(json.loads(answer)["data"]["id"])

        def final() -> dict[int, str] | None:
            found = {}
            for tid in ids:
                _, body = curl(f"curl -s {headers} {base}/transfers/{tid}")
                found[tid] = json.loads(body)["data"]["status"]
            return None if "pending" in found.values() else found

        statuses = wait_until(final, timeout=60, what="every transfer is settled or failed")
        settled = sum(s == "settled" for s in statuses.values())
        failed = sum(s == "failed" for s in statuses.values())
        assert (settled, failed) == (11, 1)

        # The workers' series, on web's /metrics, count exactly the transfers they decided.
        scrape = f"curl -s -H 'Authorization: Bearer {operator.group(1)}' {base}/metrics"

        def counted() -> Samples | None:
            status, text = curl(scrape)
            assert status == 200, text
            found = samples(text)
            finished = "settle_transfers_finished_total"
            done = (
                value(found, finished, outcome="settled", failure_code=""),
                value(found, finished, outcome="failed", failure_code="insufficient_funds"),
            )
            return found if done == (settled, failed) else None

        found = wait_until(counted, timeout=30, what="/metrics counts the transfers decided")
        assert value(found, "settle_transfer_settle_latency_seconds_count") == settled
        processed = value(found, "settle_worker_messages_processed_total", actor="settle_transfers")
        assert processed is not None and processed >= 1
        assert value(found, "settle_worker_messages_in_progress", actor="settle_transfers") == 0
        # Every role's processes alive, and each supervisor's counters present at zero.
        for role, processes in (("web", 2), ("worker", 2), ("sweeper", 1)):
            assert value(found, "settle_processes", role=role) == processes
            assert value(found, "settle_process_restarts_total", role=role) == 0
            assert value(found, "settle_dependency_unreachable_total", role=role) == 0
            assert value(found, "settle_connections_leased", role=role)
        # The webhook delivery process, which `settle worker` supervises beside dramatiq.
        assert value(found, "settle_processes", role="webhooks") == 1
        budget = value(found, "settle_connection_budget")
        planned = sum(v for (name, _), v in found.items() if name == "settle_connections_planned")
        assert budget is not None and 0 < planned <= budget
        info = [labels for (name, labels) in found if name == "settle_build_info"]
        assert len(info) == 1 and dict(info[0])["version"]

        # The banner's export line: `settle status`, in another terminal, reaches the
        # embedded servers.
        export = next(line.strip() for line in lines if line.startswith("  export "))
        command = next(line.strip() for line in lines if line.endswith("settle status"))
        status_run = subprocess.run(
            ["bash", "-c", f"{export}; {command}"],
            env=newcomer_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status_run.returncode == 0, status_run.stdout + status_run.stderr
        assert (
            "processes alive (live leases): 2 web, 2 worker, 1 webhooks, 1 sweeper"
            in status_run.stdout
        )
        assert "transfers: 0 pending (0 dead-lettered)" in status_run.stdout
    finally:
        code = run.stop(group=False, timeout=60)
    assert code == 0, run.logs()
    assert run.log_count("settle run: stopped") == 1
