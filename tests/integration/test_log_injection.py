"""A request path with an encoded line break cannot forge a log line: the web front logs the
path of a refused request, and each record stays one line in both formats."""

from __future__ import annotations

import io
import json
import logging

import falcon.testing
import pytest

from shared.config import Settings
from shared.db.pool import create_pool
from shared.runtime import logs
from web.app import create_app

FORGED = "2024-01-01 00:00:00,000 web[1] INFO web.dashboard.pages: dashboard: key 1 logged in"


def _never_enqueue(transfer_id: int) -> None:
    raise AssertionError("nothing here submits a transfer")


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("encoded", ["%0A", "%0D%0A", "%C2%85", "%E2%80%A8", "%E2%80%A9"])
def test_a_request_path_with_an_encoded_line_break_does_not_forge_a_log_line(
    settings: Settings, operator_key: str, fmt: str, encoded: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("web", fmt))
    errors_log = logging.getLogger("web.errors")
    errors_log.addHandler(handler)
    # A pool with its one connection held: the request is refused with a 503 that is
    # logged with its method and path.
    pool = create_pool(settings.with_(pool_timeout=0.1), "web-test", size=1)
    pool.open(wait=True, timeout=10)
    try:
        app = create_app(settings, pool=pool, enqueue=_never_enqueue, ping_broker=lambda: None)
        client = falcon.testing.TestClient(app)
        path = "/users/1" + encoded + FORGED.replace(" ", "%20") + encoded
        with pool.connection():
            resp = client.simulate_get(path, headers={"Authorization": f"Bearer {operator_key}"})
        assert resp.status_code == 503
    finally:
        errors_log.removeHandler(handler)
        pool.close()
    written = stream.getvalue()
    assert written, "the refusal was not logged"
    lines = written.splitlines()  # what a line-oriented reader sees
    assert len(lines) == 1, lines
    assert not any(line.startswith(FORGED[:23]) for line in lines)
    if fmt == "json":
        event = json.loads(lines[0])["event"]
        assert "/users/1" in event and FORGED in event  # the path is kept, escaped
    else:
        assert "GET /users/1\\" in lines[0] and "database_busy" in lines[0]
