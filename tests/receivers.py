"""Real webhook receivers on 127.0.0.1 for the tests, never mocks.

- `RecordingReceiver`: an HTTP server in a thread of the test that records every request
  (path, headers, raw body) and answers as the test says at the moment: a status, after a
  delay, or a redirect.
- `ExampleReceiver`: docs/examples/webhook_receiver.py, the receiver the docs give callers,
  run as a process of its own; it verifies signatures and keeps each event once in its
  store, which the test reads.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.runtime.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "webhook_receiver.py"


def example_module() -> ModuleType:
    """docs/examples/webhook_receiver.py as a module (its `verify`)."""
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class RecordingReceiver:
    """Records requests and answers `status` after `delay` seconds (`location` makes it a
    redirect). Change them at any time; `stop()` closes it."""

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.location: str | None = None
        self.requests: list[Request] = []
        #: Requests received and not yet answered.
        self.in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver.in_flight += 1
                try:
                    if receiver.delay:
                        time.sleep(receiver.delay)
                    self.send_response(receiver.status)
                    if receiver.location is not None:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A request Settle cut off at its deadline fails the late answer: expected here.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def event_ids(self) -> list[int]:
        return [int(r.headers["settle-event-id"]) for r in self.received()]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ExampleReceiver:
    """docs/examples/webhook_receiver.py on a port of its own, keeping its store in
    `folder`; `start` and `stop` may be called again (a receiver that was down)."""

    def __init__(self, folder: Path, secrets: list[str]) -> None:
        self.port = free_port()
        self.store = folder / "events.jsonl"
        self.log = folder / "receiver.log"
        self.secrets = secrets
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _banners(self) -> int:
        return self.log.read_text().count("receiving Settle webhooks") if self.log.exists() else 0

    def start(self) -> None:
        before = self._banners()
        env = {**os.environ, "SETTLE_WEBHOOK_SECRET": ",".join(self.secrets)}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    str(EXAMPLE),
                    "--port",
                    str(self.port),
                    "--store",
                    str(self.store),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while self._banners() == before:
            assert self._process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the example receiver did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def events(self) -> list[dict[str, Any]]:
        """The events it handled, each once, in the order it handled them."""
        if not self.store.exists():
            return []
        return [json.loads(line) for line in self.store.read_text().splitlines() if line]

    def handled_log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " event " in line]
