"""Per-key rate limits across real web processes and hosts: two `settle web` services on one
database and broker (two hosts, WEB_INSTANCES=2), a key flooding both while another key's
requests are all answered, on each broker.

On Redis every process of both hosts draws from one bucket per key: the first host flooded
lets through the key's whole burst, and the second then none. On RabbitMQ each web process
holds its own bucket with its share of the limit (the burst divided by the processes of all
hosts, here 2 x 1): each host lets through its half. Either way the key gets no more than its
limit over both hosts. The key's rate is one request per 100 s, so no token comes back
while the test runs: the counts are exact with no assertion on time."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from shared.config.brokers import broker_name
from shared.ledger import auth
from shared.runtime.embedded import free_port
from tests.e2e.api import operator_key
from tests.e2e.conftest import Service
from tests.e2e.processes import report
from tests.helpers import make_user

pytestmark = pytest.mark.e2e

BURST = 12
FLOOD = 24  # requests of the flooding key to each host
CALM = 16  # requests of the other key, spread over both hosts


@pytest.fixture
def broker_env(broker_url: str) -> dict[str, str]:
    """Each broker in turn: the suite's Redis, then a RabbitMQ vhost of the test's own."""
    return {"BROKER_URL": broker_url}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    code: str | None


def get(port: int, path: str, key: str) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        body = resp.read()
        code = json.loads(body)["error"]["code"] if resp.status >= 400 else None
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, code)
    finally:
        conn.close()


def flood(port: int, key: str, count: int) -> list[Answer]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: get(port, "/users/me", key), range(count)))


def refusals_counted(port: int) -> dict[str, float]:
    """`settle_rate_limited_total` by route, as the web on `port` exposes it (zeros left out)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {operator_key()}"})
        scraped = conn.getresponse()
        assert scraped.status == 200
        text = scraped.read().decode()
    finally:
        conn.close()
    found = re.finditer(r'^settle_rate_limited_total\{route="([^"]*)"\} (\S+)$', text, re.M)
    return {m.group(1): float(m.group(2)) for m in found if float(m.group(2))}


@pytest.fixture
def two_hosts(service: Service, tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Host A (`service`) and host B: the same environment but the port and the metrics
    folder (a host's own), each started as
    `settle web` is; both counted in the plan (WEB_INSTANCES=2). On Redis each host runs two
    web processes; on RabbitMQ one, so that which process a request reaches decides nothing."""
    processes = "2" if broker_name(service.env["BROKER_URL"]) == "redis" else "1"
    limits = {
        "RATE_LIMIT_PER_SECOND": "100",
        "RATE_LIMIT_BURST": "200",
        "WEB_INSTANCES": "2",
        "WEB_PROCESSES": processes,
    }
    service.env.update(limits)
    metrics = str(tmp_path / "metrics-host-b")
    other = Service({**service.env, "PORT": str(free_port()), "METRICS_DIR": metrics}, tmp_path)
    try:
        for host in (service, other):
            host.start_web()
        yield service, other
    finally:
        other.kill_all()


def test_a_flooding_key_gets_no_more_than_its_limit_over_two_hosts_and_another_key_gets_all(
    two_hosts: tuple[Service, Service], db: psycopg.Connection
) -> None:
    a, b = two_hosts
    on_redis = broker_name(a.env["BROKER_URL"]) == "redis"
    flooder = auth.create_key(db, user_id=make_user(db), rate=0.01, burst=BURST).key
    calm = auth.create_key(db, user_id=make_user(db)).key
    processes = [*a.processes, *b.processes]

    with ThreadPoolExecutor(2) as side:
        calm_answers = side.submit(
            lambda: [get((a, b)[i % 2].port, "/users/me", calm) for i in range(CALM)]
        )
        first = flood(a.port, flooder, FLOOD)
        second = flood(b.port, flooder, FLOOD)
        quiet = calm_answers.result()

    assert [q.status for q in quiet] == [200] * CALM, report(processes)
    # On Redis host A's processes empty the one bucket and host B finds it empty; on
    # RabbitMQ each host's process has its own half.
    share = BURST if on_redis else BURST // 2
    expected = (share, 0) if on_redis else (share, share)
    allowed = (
        sum(x.status == 200 for x in first),
        sum(x.status == 200 for x in second),
    )
    assert allowed == expected, report(processes)
    assert sum(allowed) <= BURST
    refused = [x for x in first + second if x.status != 200]
    assert {x.status for x in refused} == {429}
    assert {x.code for x in refused} == {"rate_limited"}
    for answer in refused:
        assert re.fullmatch(r"[1-9][0-9]*", answer.headers["retry-after"])
        # A process's share earns back its q in as long as the whole bucket does.
        assert answer.headers["ratelimit-policy"] == f'"key";q={share};w={BURST * 100}'
        assert re.fullmatch(r'"key";r=0;t=[0-9]+', answer.headers["ratelimit"])
    for answer in first + second + quiet:
        if answer.status == 200:
            assert re.fullmatch(r'"(key|default)";r=[0-9]+;t=[0-9]+', answer.headers["ratelimit"])

    # Every refusal is counted, by route, on the host that answered it.
    counted: dict[str, float] = {}
    for host in (a, b):
        for route, value in refusals_counted(host.port).items():
            counted[route] = counted.get(route, 0.0) + value
    assert counted == {"/users/me": float(len(refused))}

    for host in (a, b):
        for process in host.processes:
            assert process.stop() == 0, report(processes)
