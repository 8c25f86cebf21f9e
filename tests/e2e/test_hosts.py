"""Several hosts, one Postgres, one budget: web on one network namespace, a worker set on each
of two others, each with its own SETTLE_HOSTNAME, Postgres and Redis reached through the
test's bridge. The plan counts one worker host (WORKER_INSTANCES=1) and the budget is exactly
that plan, so the second worker host runs on the leases alone. Under load, the sampled
connections per role never exceed the plan; then the second worker host is lost (every
process in its namespace killed at once): its leases expire, the first host's pools grow
back to what they want, and every transfer ends once."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.config import Settings
from shared.db.budget import Capacity, make_plan
from shared.ledger import auth
from shared.testing.scratch import scratch_database
from tests.e2e.processes import ROOT, SETTLE, Process, process_env, report
from tests.faults.load import Load, accounts_with_money, random_plan
from tests.helpers import wait_until
from tests.netns import Hosts, hosts
from tests.scratch import settle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("socat"),
        reason="network namespaces need root, and the forwarders socat",
    ),
]

HOSTNAMES = {"web": "web-host", "w1": "worker-host-1", "w2": "worker-host-2"}
TTL = 3.0
TRANSFERS = 600
SETTINGS = {
    "WEB_INSTANCES": "1",
    "WEB_PROCESSES": "2",
    "WEB_THREADS": "2",
    "WORKER_INSTANCES": "1",  # the second worker host is not counted: leases share
    "WORKER_PROCESSES": "2",
    "WORKER_THREADS": "3",
    "DB_CONNECTION_BUDGET": "14",  # web 2 x 2 + 2 event watches + worker 2 x 3 + sweeper 2
    "LEASE_TTL_SECONDS": str(TTL),
    "SWEEPER_GRACE_SECONDS": "2",
}


class ActivityByHost:
    """Samples pg_stat_activity every 0.1 s: the peak per role, per (role, host), and of the
    pools' total, over the service's pooled connections (role web, events, worker or
    sweeper)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_role: Counter[str] = Counter()
        self.peak_host: Counter[tuple[str, str]] = Counter()
        self.peak_total = 0
        self.samples = 0

    def now(self, conn: psycopg.Connection) -> Counter[tuple[str, str]]:
        rows = conn.execute(
            "SELECT split_part(application_name, ':', 2), split_part(application_name, ':', 3),"
            " count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND split_part(application_name, ':', 2) IN ('web', 'events', 'worker', 'sweeper')"
            " GROUP BY 1, 2"
        ).fetchall()
        return Counter({(role, host): int(n) for role, host, n in rows})

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(0.1):
                now = self.now(conn)
                by_role: Counter[str] = Counter()
                for (role, host), n in now.items():
                    by_role[role] += n
                    self.peak_host[(role, host)] = max(self.peak_host[(role, host)], n)
                for role, n in by_role.items():
                    self.peak_role[role] = max(self.peak_role[role], n)
                self.peak_total = max(self.peak_total, sum(by_role.values()))
                self.samples += 1

    def __enter__(self) -> ActivityByHost:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Cluster:
    """The processes started on the hosts, with their logs."""

    def __init__(self, made: Hosts, env: dict[str, str], log_dir: Path) -> None:
        self.hosts = made
        self.env = env
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def start(self, host: str, role: str, **extra: str) -> Process:
        env = {**self.env, "SETTLE_HOSTNAME": HOSTNAMES[host], **extra}
        log_path = self.log_dir / f"{host}-{role}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                self.hosts.command(host, [str(SETTLE), role]),
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(f"{role}@{host}", popen, log_path)
        self.processes.append(process)
        return process


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """Three hosts, a database and a broker namespace of the test's own; (cluster, the
    database's direct URL). Everything is removed afterwards, whatever happened."""
    server = conninfo_to_dict(settings.database_url)
    if str(server.get("host", "")).startswith("/"):
        pytest.skip("Postgres is reached through a Unix socket; the forwarders need TCP")
    redis_port = int(str(settings.redis_url).rsplit(":", 1)[1].split("/", 1)[0])
    with (
        scratch_database(settings.database_url, prefix="settle_hosts") as direct,
        hosts(
            list(HOSTNAMES),
            {"postgres": int(str(server.get("port", 5432))), "redis": redis_port},
        ) as made,
    ):
        namespace = f"settle-hosts-{uuid.uuid4().hex[:8]}"
        env = process_env(
            DATABASE_URL=make_conninfo(
                direct, host=made.gateway, port=str(made.forwarded["postgres"])
            ),
            BROKER_URL=f"redis://{made.gateway}:{made.forwarded['redis']}/0",
            BROKER_NAMESPACE=namespace,
            **SETTINGS,
        )
        built = Cluster(made, env, tmp_path)
        try:
            yield built, direct
        finally:
            for process in built.processes:
                process.kill()
            client = redis.Redis.from_url(settings.redis_url)
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


def leases(conn: psycopg.Connection, hostname: str) -> list[int]:
    rows = conn.execute(
        "SELECT granted FROM connection_leases WHERE holder LIKE %s ORDER BY holder",
        (f"settle:worker:{hostname}:%",),
    ).fetchall()
    return [int(row[0]) for row in rows]


def test_two_worker_hosts_share_one_budget_and_one_lost_host_loses_nothing(
    cluster: tuple[Cluster, str],
) -> None:
    svc, direct = cluster
    plan = make_plan(Settings.from_env(svc.env), Capacity(14, "DB_CONNECTION_BUDGET"))
    web_address, port = svc.hosts.address["web"], int(svc.env["PORT"])
    with psycopg.connect(direct, autocommit=True) as conn:
        key = auth.create_key(conn, user_id=None, label="hosts").key
        _, accounts = accounts_with_money(conn, 30, 50_000)

    try:
        with ActivityByHost(direct) as activity:
            svc.start("web", "web", HOST=web_address, PORT=str(port))
            wait_until(
                lambda: http_status_at(web_address, port) == 200,
                timeout=30,
                what="web answers /readyz on its host",
            )
            svc.start("web", "sweeper").wait_for_log("sweeping every")
            first = svc.start("w1", "worker")
            first.wait_for_log("Worker process is ready for action.", count=2, timeout=60)
            second = svc.start("w2", "worker")
            second.wait_for_log("Worker process is ready for action.", count=2, timeout=60)

            load = Load(port, random_plan(accounts, TRANSFERS, seed=7), api_key=key,
                        threads=8, host=web_address).start()  # fmt: skip
            with psycopg.connect(direct, autocommit=True) as conn:
                funded = finished(conn)
                wait_until(
                    lambda: finished(conn) - funded >= 150,
                    timeout=60,
                    what="150 transfers finish",
                )
                shared_first = leases(conn, HOSTNAMES["w1"])
                lost = svc.hosts.lose("w2")
                assert lost, "the second worker host ran no process"
                wait_until(
                    lambda: leases(conn, HOSTNAMES["w2"]) == [],
                    timeout=3 * TTL,
                    what="the lost host's leases expire",
                )
                wait_until(
                    lambda: leases(conn, HOSTNAMES["w1"]) == [3, 3],
                    timeout=3 * TTL,
                    what="the surviving worker host's leases grow back to what they want",
                )
                wait_until(
                    lambda: activity.now(conn)[("worker", HOSTNAMES["w1"])] == 6,
                    timeout=3 * TTL,
                    what="the surviving worker host's pools hold 6 connections",
                )
                load.join(timeout=120)
                assert load.complete, load.statuses
                ids = load.ids()
                wait_until(
                    lambda: unfinished(conn, ids) == 0,
                    timeout=60,
                    what="every accepted transfer is settled or failed",
                )
                outcomes = conn.execute(
                    "SELECT t.status, count(e.id) FROM transfers t LEFT JOIN entries e"
                    " ON e.transfer_id = t.id WHERE t.id = ANY(%s) GROUP BY t.id, t.status",
                    (ids,),
                ).fetchall()
    except BaseException:
        print(report(svc.processes))
        raise

    print(
        f"\nsampled peaks ({activity.samples} samples): per role {dict(activity.peak_role)},"
        f" total {activity.peak_total} of {plan.capacity.available};"
        f" per host {dict(activity.peak_host)}; worker-host-1 leases while shared"
        f" {shared_first}"
    )
    assert sum(shared_first) < 6  # the two worker hosts did share the workers' room
    assert activity.peak_role["web"] <= plan.web.total
    assert activity.peak_role["worker"] <= plan.worker.total
    assert activity.peak_role["sweeper"] <= plan.sweeper.total
    assert activity.peak_role["events"] <= plan.events.total
    assert activity.peak_total <= plan.capacity.available
    assert len(set(ids)) == TRANSFERS
    assert all(entries == (2 if status == "settled" else 0) for status, entries in outcomes)
    assert len(outcomes) == TRANSFERS
    assert load.unexpected == []
    audit = settle("audit", "--pending-threshold", "0", env={**svc.env, "DATABASE_URL": direct})
    assert audit.returncode == 0, audit.stdout


def http_status_at(address: str, port: int) -> int | None:
    with contextlib.suppress(OSError):
        conn = http.client.HTTPConnection(address, port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status
        finally:
            conn.close()
    return None


def finished(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM transfers WHERE status <> 'pending'").fetchone()
    assert row is not None
    return int(row[0])


def unfinished(conn: psycopg.Connection, ids: list[int]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM transfers WHERE id = ANY(%s) AND status = 'pending'", (ids,)
    ).fetchone()
    assert row is not None
    return int(row[0])
