"""`/metrics`, request ids, JSON log lines and the broker's queue counts, in process against
the real Postgres and Redis. (The multiprocess path, with real web and worker processes, is
tests/e2e/test_metrics.py.)"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import falcon.testing
import psycopg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.broker.redis_broker import SettleRedisBroker
from shared.config import Settings
from shared.db.pool import create_pool
from shared.ledger import auth, dead_letters
from shared.runtime import logs
from shared.runtime.metrics import ROLES, PoolStats, QueueDepth
from tests.contract import held_to_document
from tests.helpers import make_account, make_user, submit
from web.app import create_app
from worker.actors import create_broker


def _never_enqueue(transfer_id: int) -> None:
    raise AssertionError("no test here submits a transfer over HTTP")


@pytest.fixture
def metrics_client(
    settings: Settings, pool: ConnectionPool, operator_key: str
) -> Iterator[falcon.testing.TestClient]:
    """The app with the suite broker's queues counted, every answer held to the OpenAPI
    document."""
    from worker.actors import settle_transfer

    broker = settle_transfer.broker  # the broker conftest installed

    app = create_app(
        settings, pool=pool, enqueue=_never_enqueue, ping_broker=broker.ping, queues=broker
    )
    with held_to_document(app) as recorder:
        yield falcon.testing.TestClient(
            recorder, headers={"Authorization": f"Bearer {operator_key}"}
        )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_refuses_a_request_without_a_key_and_a_users_key_with_401(
    metrics_client: falcon.testing.TestClient, db: psycopg.Connection
) -> None:
    user_key = auth.create_key(db, user_id=make_user(db)).key
    for header in ("", f"Bearer {user_key}", f"Bearer {auth.generate_key()}"):
        resp = metrics_client.simulate_get("/metrics", headers={"Authorization": header})
        assert resp.status_code == 401
        assert resp.json["error"]["code"] in {"api_key_missing", "api_key_invalid"}
        assert "settle_" not in resp.text


def test_metrics_counts_requests_by_route_template_never_by_raw_path(
    metrics_client: falcon.testing.TestClient, db: psycopg.Connection
) -> None:
    before = samples(metrics_client.simulate_get("/metrics").text)
    users = [make_user(db) for _ in range(3)]
    for user in users:
        assert metrics_client.simulate_get(f"/users/{user}").status_code == 200
    assert metrics_client.simulate_get("/no/such/path").status_code == 404
    assert metrics_client.simulate_delete(f"/users/{users[0]}").status_code == 405

    resp = metrics_client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    after = samples(resp.text)

    def delta(**labels: str) -> float:
        name = "settle_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route="/users/{user_id}", method="GET", status="200") == 3
    assert delta(route="unmatched", method="GET", status="404") == 1
    assert delta(route="/users/{user_id}", method="DELETE", status="405") == 1
    assert delta(route="/metrics", method="GET", status="200") == 1  # the first scrape
    routes = {dict(labels).get("route") for (name, labels) in after if "route" in dict(labels)}
    # No raw path: every /users/... label is a template (/users/me is one, without a field).
    raw = {r for r in routes if str(r).startswith("/users/") and "{" not in str(r)}
    assert raw <= {"/users/me"}
    duration = "settle_http_request_duration_seconds_count"
    assert value(after, duration, route="/users/{user_id}", method="GET") >= 3


def test_metrics_reads_transfers_the_oldest_pending_one_and_the_budget(
    metrics_client: falcon.testing.TestClient, db: psycopg.Connection
) -> None:
    treasury, account = make_account(db, treasury=True), make_account(db)
    before = samples(metrics_client.simulate_get("/metrics").text)
    transfer = submit(db, treasury, account, 100)
    db.execute(
        "UPDATE transfers SET created_at = now() - interval '1 hour' WHERE id = %s", (transfer,)
    )
    after = samples(metrics_client.simulate_get("/metrics").text)
    pending = value(after, "settle_transfers", status="pending")
    assert pending == value(before, "settle_transfers", status="pending") + 1
    assert value(after, "settle_oldest_pending_transfer_age_seconds") >= 3600
    budget = value(after, "settle_connection_budget")
    planned = sum(value(after, "settle_connections_planned", role=r) for r in ROLES)
    assert 0 < planned <= budget
    # Done with it: leave the shared ledger with nothing pending from this test.
    db.execute("UPDATE transfers SET created_at = now() WHERE id = %s", (transfer,))


def test_pool_series_are_present_at_zero_and_track_get_stats(settings: Settings) -> None:
    """psycopg_pool leaves zero counters out of get_stats(); the series exist anyway, and
    the wait time grows by what the pool reports, once."""
    from prometheus_client import REGISTRY

    role = f"test-{uuid.uuid4().hex[:6]}"
    pool = create_pool(settings, "web-test", size=1, timeout=0.2)
    pool.open(wait=True, timeout=10)
    try:
        stats = PoolStats(pool, role)
        stats.publish()

        def get(name: str) -> float | None:
            return REGISTRY.get_sample_value(name, {"role": role})

        assert get("settle_db_pool_size") == 1
        assert get("settle_db_pool_available") == 1
        assert get("settle_db_pool_wait_seconds_total") == 0
        assert get("settle_db_pool_connections_lost_total") == 0
        with pool.connection():  # the only connection is out: the next borrower waits
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.2)
            stats.publish()
            assert get("settle_db_pool_available") == 0
        waited = pool.get_stats()["requests_wait_ms"] / 1000
        stats.publish()
        stats.publish()
        assert get("settle_db_pool_wait_seconds_total") == pytest.approx(waited)
    finally:
        pool.close()


def test_a_well_formed_request_id_is_echoed_and_any_other_replaced(
    metrics_client: falcon.testing.TestClient, db: psycopg.Connection
) -> None:
    user = make_user(db)
    given = "req-" + uuid.uuid4().hex
    resp = metrics_client.simulate_get(f"/users/{user}", headers={"X-Request-Id": given})
    assert resp.headers["x-request-id"] == given
    made = {
        metrics_client.simulate_get(f"/users/{user}").headers["x-request-id"],
        metrics_client.simulate_get("/nowhere").headers["x-request-id"],
    }
    for bad in ("has space", "x" * 129, 'quote"d', ""):
        made.add(
            metrics_client.simulate_get(f"/users/{user}", headers={"X-Request-Id": bad}).headers[
                "x-request-id"
            ]
        )
    assert len(made) == 6  # all new, all different
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)


def test_log_lines_are_json_objects_carrying_the_request_id(
    settings: Settings, operator_key: str
) -> None:
    """A request turned away because the pool is exhausted logs a warning; as JSON it names
    the request's id, the role and the process."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("web", "json"))
    errors_log = logging.getLogger("web.errors")
    errors_log.addHandler(handler)
    pool = create_pool(settings.with_(pool_timeout=0.1), "web-test", size=1)
    pool.open(wait=True, timeout=10)
    try:
        app = create_app(settings, pool=pool, enqueue=_never_enqueue, ping_broker=lambda: None)
        client = falcon.testing.TestClient(app)
        with pool.connection():
            resp = client.simulate_get(
                "/users/1",
                headers={"Authorization": f"Bearer {operator_key}", "X-Request-Id": "abc-42"},
            )
        assert resp.status_code == 503
    finally:
        errors_log.removeHandler(handler)
        pool.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "the refusal was not logged"
    line = lines[-1]
    assert line["request_id"] == "abc-42"
    assert line["level"] == "warning" and line["role"] == "web" and line["pid"] > 0
    assert "database_busy" in line["event"] and line["time"].endswith("+00:00")


def test_text_log_lines_name_the_ids_and_json_ones_keep_tracebacks_on_one_line() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "transfer %s failed", (7,), None)
    with logs.bind(request="r-1", transfer=7):
        text = logs.formatter("worker", "text").format(record)
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
        line = logs.formatter("worker", "json").format(record)
    assert "transfer 7 failed [request_id=r-1 transfer_id=7]" in text
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["transfer_id"] == 7 and "ValueError: boom" in parsed["exc"]
    assert logs.request_id.get() is None and logs.transfer_id.get() is None


def test_auto_means_text_on_a_terminal_and_json_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", Terminal()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("json", Terminal()) == "json"
    assert logs.resolve_format("text", io.StringIO()) == "text"


def test_waitress_queue_warning_is_never_built() -> None:
    """Waitress calls `queue_logger.warning(...)` for every queued request; after `configure`
    that logger is off below ERROR, so the call returns before building a record."""
    logs.configure("web", "json", stream=io.StringIO())
    assert not logging.getLogger("waitress.queue").isEnabledFor(logging.WARNING)


def depth_series() -> float | None:
    return REGISTRY.get_sample_value("settle_web_queue_depth")


def test_queue_depth_is_published_and_warned_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    depth = [0]
    now = [1000.0]
    queue = QueueDepth(lambda: depth[0], interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="shared.runtime.metrics")
    queue.publish()
    assert depth_series() == 0 and not caplog.records
    for n in (5, 7, 9):
        depth[0] = n
        queue.publish()
        assert depth_series() == n
        now[0] += 1
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "5 request(s) waiting for a web thread"
    ]
    now[0] += 60
    queue.publish()
    assert len(caplog.records) == 2
    assert "(3 reading(s) found a queue in the last 60s)" in caplog.records[1].getMessage()
    depth[0] = 0
    queue.publish()
    assert depth_series() == 0 and len(caplog.records) == 2


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_queue_counts_follow_real_messages_through_the_broker(
    settings: Settings, broker_url: str
) -> None:
    """Pins dramatiq's Redis layout: real enqueues, a delayed message, a fetched one and a
    dead letter (a nack) land in the states counted. (RabbitMQ's counts:
    tests/integration/test_broker_operations.py.)"""
    from worker.actors import settle_transfer

    namespace = f"settle-test-queues-{uuid.uuid4().hex[:8]}"
    broker, _ = create_broker(settings.with_(broker_url=broker_url, broker_namespace=namespace))
    assert isinstance(broker, SettleRedisBroker)
    try:
        broker.declare_queue("transfers")
        for tid in (1, 2, 3):
            broker.enqueue(settle_transfer.message(tid))
        broker.enqueue(settle_transfer.message(4), delay=60_000)
        assert broker.depths("transfers") == {
            "ready": 3,
            "in_flight": 0,
            "delayed": 1,
            "dead": 0,
        }
        consumer = broker.consume("transfers", prefetch=1, timeout=1000)
        message = next(consumer)
        assert message is not None
        assert broker.depths("transfers")["in_flight"] == 1
        consumer.nack(message)
        consumer.close()
        assert broker.depths("transfers") == {
            "ready": 2,
            "in_flight": 0,
            "delayed": 1,
            "dead": 1,
        }
    finally:
        keys = list(broker.client.scan_iter(match=f"{namespace}*"))
        if keys:
            broker.client.delete(*keys)
        broker.client.close()


def test_dead_letters_show_in_the_metrics_of_the_database(
    metrics_client: falcon.testing.TestClient, db: psycopg.Connection
) -> None:
    treasury, account = make_account(db, treasury=True), make_account(db)
    before = samples(metrics_client.simulate_get("/metrics").text)
    transfer = submit(db, treasury, account, 5)
    assert dead_letters.mark(db, transfer, "test")
    try:
        after = samples(metrics_client.simulate_get("/metrics").text)
        assert value(after, "settle_transfers_dead_lettered") == (
            value(before, "settle_transfers_dead_lettered") + 1
        )
    finally:
        dead_letters.release(db, [transfer])
