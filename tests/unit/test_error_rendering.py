"""Errors reach HTTP in one place: Falcon's handler and `render` (for WSGI code in front of
Falcon, such as the load shedder) give the same status, headers and body."""

from __future__ import annotations

import json

import falcon
import falcon.testing
import pytest

from shared import errors
from web.errors import handle_settle_error, render

CASES = [
    errors.Overloaded("the server is overloaded; retry"),
    errors.NotReady("postgres ok; redis unavailable: ConnectionError"),
    errors.ApiKeyMissing("no key"),
    errors.TransferNotFound("transfer 7 does not exist"),
    errors.SettleError("internal error"),
]


class Raises:
    def __init__(self, error: errors.SettleError) -> None:
        self._error = error

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise self._error


@pytest.mark.parametrize("error", CASES, ids=lambda e: e.code)
def test_render_answers_exactly_what_the_falcon_error_handler_answers(
    error: errors.SettleError,
) -> None:
    app = falcon.App()
    app.add_route("/", Raises(error))
    app.add_error_handler(errors.SettleError, handle_settle_error)
    through_falcon = falcon.testing.TestClient(app).simulate_get("/")

    status, headers, body = render(error)

    assert status == through_falcon.status
    assert json.loads(body) == through_falcon.json
    assert json.loads(body) == {"error": {"code": error.code, "message": error.message}}
    rendered = {name.lower(): value for name, value in headers}
    assert rendered["content-length"] == str(len(body))
    for name in ("content-type", "retry-after", "www-authenticate"):
        assert rendered.get(name) == through_falcon.headers.get(name), name


def test_an_overload_renders_as_503_with_retry_after() -> None:
    status, headers, body = render(errors.Overloaded("the server is overloaded; retry"))
    assert status == "503 Service Unavailable"
    assert ("Retry-After", "1") in headers
    assert json.loads(body)["error"]["code"] == "overloaded"
