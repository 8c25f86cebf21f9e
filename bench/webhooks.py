"""The bench's webhooks section: accepted -> settled at the polite intake rate with failing
webhook receivers attached, beside the same run without webhooks.

Two receivers on 127.0.0.1, started here: one answers every delivery 500 at once, the other
answers only after `SLOW_SECONDS` (past the delivery timeout of 5 s, so every attempt holds a
delivery thread for the whole timeout and fails). With webhooks, an operator key subscribes
one endpoint to each (`POST /webhook-endpoints`, every event type), so every transfer makes
four deliveries (accepted and settled, to each endpoint), all failing and retried with
backoff. Rounds alternate without and with (A B A B ...), each offering POST /transfers at
the intake rate for the same seconds; after a round with webhooks the endpoints are deleted
(their pending deliveries cancelled) and the webhooks queue is left to drain before the next
round. From the database: accepted -> settled p50/p99 and settled/s (settled transfers over
the first acceptance to the last settlement), and the deliveries and attempts made, so that
the figures show the webhooks were at work. Medians of the rounds are quoted, as ratios
with webhooks to without.

    .venv/bin/python -m bench.webhooks [--rate 300] [--seconds 20] [--rounds 3]

`make bench` runs it after section 3c with the same processes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from bench.harness import wait_terminal, wait_until
from bench.load import offer_transfers
from shared.events.feed import TYPES

#: How long the slow receiver takes to answer: past the delivery's 5 s timeout.
SLOW_SECONDS = 6.0

_FIGURES = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)),
       count(*) FILTER (WHERE status = 'settled'),
       extract(epoch FROM max(settled_at) - min(created_at))
  FROM transfers WHERE id = ANY(%s)
"""


class _Receiver(http.server.BaseHTTPRequestHandler):
    """`POST /fail`: 500 at once; `POST /slow`: 200 after SLOW_SECONDS (too late)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/slow":
            time.sleep(SLOW_SECONDS)
            code = 200
        else:
            code = 500
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per delivery would drown the bench's output


@contextlib.contextmanager
def receivers() -> Iterator[int]:
    """The port of the failing receivers (`/fail` and `/slow`), stopped on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-receivers", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _call(port: int, method: str, path: str, key: str, body: object | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise SystemExit(f"bench.webhooks: {method} {path} answered {resp.status}: {raw!r}")
        return json.loads(raw) if raw else None
    finally:
        conn.close()


def subscribe(port: int, key: str, receiver_port: int) -> list[int]:
    """Endpoints for the failing and the slow receiver, every event type, by an operator."""
    return [
        _call(
            port,
            "POST",
            "/webhook-endpoints",
            key,
            {"url": f"http://127.0.0.1:{receiver_port}{path}", "event_types": list(TYPES)},
        )["data"]["id"]
        for path in ("/fail", "/slow")
    ]


def _scalar(conn: psycopg.Connection, query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0] or 0)


def one_round(
    *,
    port: int,
    key: str,
    conn: psycopg.Connection,
    url: str,
    accounts: range,
    rate: float,
    seconds: float,
    seed: int,
    receiver_port: int | None,
    webhook_backlog: Callable[[], int],
) -> dict[str, float]:
    """One intake run (with webhooks when `receiver_port` is given) and its figures."""
    endpoints = subscribe(port, key, receiver_port) if receiver_port else []
    deliveries_before = _scalar(conn, "SELECT coalesce(max(id), 0) FROM webhook_deliveries")
    attempts_before = _scalar(conn, "SELECT coalesce(max(id), 0) FROM webhook_attempts")
    rng = random.Random(seed)
    pairs: list[tuple[int, int, int]] = []
    for _ in range(int(rate * seconds)):
        payer, payee = rng.sample(accounts, 2)
        pairs.append((payer, payee, rng.randint(1, 100)))
    offered = offer_transfers(
        port, {"Authorization": f"Bearer {key}"}, lambda i: pairs[i], rate=rate, seconds=seconds
    )
    wait_terminal(url, offered.accepted, timeout=300)
    row = conn.execute(_FIGURES, (offered.accepted,)).fetchone()
    assert row is not None
    deliveries = _scalar(
        conn, "SELECT count(*) FROM webhook_deliveries WHERE id > %s", deliveries_before
    )
    attempts = _scalar(conn, "SELECT count(*) FROM webhook_attempts WHERE id > %s", attempts_before)
    for endpoint in endpoints:
        _call(port, "DELETE", f"/webhook-endpoints/{endpoint}", key)
    if endpoints:
        # The next round starts with no delivery left to send: the queued messages of the
        # cancelled deliveries are consumed (each a no-op) and the slow attempts time out.
        wait_until(lambda: webhook_backlog() == 0, timeout=600, what="the webhooks queue drains")
        time.sleep(SLOW_SECONDS)
    settled, window = int(row[2]), float(row[3] or 0)
    return {
        "accepted": len(offered.accepted),
        "refused": sum(offered.refused.values()),
        "settle_p50_ms": float(row[0] or "nan") * 1000,
        "settle_p99_ms": float(row[1] or "nan") * 1000,
        "settled_per_s": settled / window if window else float("nan"),
        "deliveries_made": deliveries,
        "attempts_made": attempts,
    }


@contextlib.contextmanager
def queue_backlog(env: dict[str, str]) -> Iterator[Callable[[], int]]:
    """A function counting the webhooks queue's messages not yet done with (its dead letters
    aside), through a broker client of the processes' settings; closed on exit."""
    from shared.broker.messages import WEBHOOK_QUEUE
    from shared.config import Settings
    from worker.actors import create_broker

    broker, _ = create_broker(Settings.from_env(env))

    def backlog() -> int:
        depths = broker.depths(WEBHOOK_QUEUE)
        return sum(depths.get(state, 0) for state in ("ready", "delayed", "in_flight"))

    try:
        yield backlog
    finally:
        broker.close()


def _median(rounds: list[dict[str, float]], name: str) -> float:
    return float(statistics.median(r[name] for r in rounds))


def run_section(
    *,
    port: int,
    key: str,
    url: str,
    conn: psycopg.Connection,
    accounts: range,
    rate: float,
    seconds: float,
    rounds: int,
    webhook_backlog: Callable[[], int],
) -> dict[str, Any]:
    """Alternate runs without and with webhooks; the medians and their ratios."""
    without: list[dict[str, float]] = []
    with_hooks: list[dict[str, float]] = []
    with receivers() as receiver_port:
        for n in range(rounds):
            for hooked, kept in ((None, without), (receiver_port, with_hooks)):
                figures = one_round(
                    port=port,
                    key=key,
                    conn=conn,
                    url=url,
                    accounts=accounts,
                    rate=rate,
                    seconds=seconds,
                    seed=100 + n,
                    receiver_port=hooked,
                    webhook_backlog=webhook_backlog,
                )
                kept.append(figures)
                print(
                    f"  round {n + 1} {'with' if hooked else 'without'} webhooks:"
                    f" accepted->settled p50 {figures['settle_p50_ms']:.1f}"
                    f" p99 {figures['settle_p99_ms']:.1f} ms,"
                    f" {figures['settled_per_s']:.0f} settled/s, {figures['refused']} refused;"
                    f" {figures['deliveries_made']} deliveries made,"
                    f" {figures['attempts_made']} attempts"
                )
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "rounds_without": without}
    out["rounds_with"] = with_hooks
    for name in ("settle_p50_ms", "settle_p99_ms", "settled_per_s"):
        out[f"without_{name}"] = _median(without, name)
        out[f"with_{name}"] = _median(with_hooks, name)
        out[f"ratio_{name}"] = statistics.median(
            w[name] / b[name] if b[name] else float("nan")
            for w, b in zip(with_hooks, without, strict=True)
        )
    out["deliveries_per_round"] = _median(with_hooks, "deliveries_made")
    out["attempts_per_round"] = _median(with_hooks, "attempts_made")
    return out


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """The section's rows of the bench table."""
    return [
        (
            f"accepted -> settled at {r['rate']:.0f}/s for {r['seconds']:.0f} s, with a receiver"
            " answering 500 and one answering after the 5 s timeout subscribed to every event"
            f" ({r['deliveries_per_round']:.0f} deliveries, {r['attempts_per_round']:.0f}"
            " attempts a round, all failing)",
            f"p50 {r['with_settle_p50_ms']:.0f} / p99 {r['with_settle_p99_ms']:.0f} ms,"
            f" {r['with_settled_per_s']:.0f} settled/s",
            f"without webhooks: p50 {r['without_settle_p50_ms']:.0f} /"
            f" p99 {r['without_settle_p99_ms']:.0f} ms, {r['without_settled_per_s']:.0f}"
            " settled/s",
            f"p50 {r['ratio_settle_p50_ms']:.2f}x, p99 {r['ratio_settle_p99_ms']:.2f}x,"
            f" settled/s {r['ratio_settled_per_s']:.2f}x",
            "latency <= 1.2x, settled/s >= 0.95x",
        ),
    ]


def main() -> None:
    from bench.harness import standalone_service

    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with standalone_service() as service, queue_backlog(service.env) as backlog:
        result = run_section(
            port=service.port,
            key=service.key,
            url=service.url,
            conn=service.conn,
            accounts=service.accounts,
            rate=args.rate,
            seconds=args.seconds,
            rounds=args.rounds,
            webhook_backlog=backlog,
        )
    for row in rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
