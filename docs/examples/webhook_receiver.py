"""A receiver of Settle's webhooks, with the Python standard library only.

It verifies each delivery's `Settle-Signature` before trusting the body, refuses old
timestamps (a replayed request), and handles each event once however often Settle sends it
(delivery is at least once: deduplicate by `Settle-Event-Id`). Handled events are appended
to a JSON-lines file, whose event ids are also what it remembers across restarts.

    SETTLE_WEBHOOK_SECRET=whsec_... python webhook_receiver.py --port 8765 --store events.jsonl

Subscribe it with `POST /webhook-endpoints` ({"url": "http://127.0.0.1:8765/",
"event_types": [...]}), which answers the secret once. During a secret rotation put both
secrets in SETTLE_WEBHOOK_SECRET, comma-separated (a delivery then carries a signature per
secret, and either one verifying is enough); drop the old one within 24 hours.

Answer 2xx quickly (Settle waits 5 seconds) and do slow work after answering; anything else
is retried with backoff for about three days.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

#: The oldest timestamp accepted, in seconds: a captured request replayed later is refused.
TOLERANCE_SECONDS = 300


def verify(header: str, body: bytes, secrets: list[str], *, now: float | None = None) -> bool:
    """Whether `header` (Settle-Signature: `t=<unix>,v1=<hex>[,v1=<hex>]`) holds a signature
    of `body` by one of `secrets`, made at most `TOLERANCE_SECONDS` ago."""
    timestamp = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_SECONDS:
        return False
    signed = str(timestamp).encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return True
    return False


class Store:
    """The events handled so far, one JSON line each; an event id is handled once."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self._seen.add(str(json.loads(line)["id"]))

    def handle_once(self, event_id: str, event: dict) -> bool:
        """Handle `event` unless its id was handled before; whether it was handled now."""
        with self._lock:
            if event_id in self._seen:
                return False
            # Handle the event here (update an order, notify someone...), then remember it.
            with self._path.open("a") as out:
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._seen.add(event_id)
            return True


class Receiver(http.server.BaseHTTPRequestHandler):
    secrets: list[str] = []
    store: Store

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)  # the raw bytes: what was signed
        if not verify(self.headers.get("Settle-Signature", ""), body, self.secrets):
            self._answer(400, "bad signature")
            return
        event_id = self.headers.get("Settle-Event-Id", "")
        event = json.loads(body)
        if str(event.get("id")) != event_id:
            self._answer(400, "Settle-Event-Id does not match the event")
            return
        handled = self.store.handle_once(event_id, event)
        self.log_message(
            "event %s %s: %s", event_id, event["type"], "handled" if handled else "seen before"
        )
        self._answer(200, "ok")

    def _answer(self, status: int, text: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--store", default="events.jsonl", help="the handled events (JSON lines)")
    args = parser.parse_args()
    secrets = [
        s.strip() for s in os.environ.get("SETTLE_WEBHOOK_SECRET", "").split(",") if s.strip()
    ]
    if not secrets:
        sys.exit("set SETTLE_WEBHOOK_SECRET to the endpoint's secret (whsec_...)")
    Receiver.secrets = secrets
    Receiver.store = Store(Path(args.store))
    server = http.server.ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"receiving Settle webhooks on http://{args.host}:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
