"""The OpenAPI document tells the truth: the app has exactly its routes and methods, every
status and error code the app can answer is listed under the operations that answer it, and
the contract check that holds every test's answers to it has teeth."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator

import jsonschema_rs
import pytest
import schemathesis
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared import errors
from shared.config import Settings
from tests import contract
from web.app import create_app
from web.errors import STATUS, status_of
from web.openapi import DOCUMENT

OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in contract.HTTP_METHODS
]
IDS = [f"{method.upper()} {path}" for path, method, _ in OPERATIONS]
PUBLIC = {"/healthz", "/readyz", "/openapi.json"}


def _never_enqueue(transfer_id: int) -> None:
    raise AssertionError("no test here submits a transfer")


@pytest.fixture
def app(settings: Settings, pool: ConnectionPool):
    return create_app(settings, pool=pool, enqueue=_never_enqueue, ping_broker=lambda: True)


def test_the_document_is_served_at_openapi_json_without_an_api_key(app) -> None:
    resp = TestClient(app).simulate_get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json == json.loads(json.dumps(DOCUMENT))


def test_the_document_is_valid_openapi_3_1_and_its_schemas_valid_json_schema() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT)).validate()

    def schemas(node: object) -> Iterator[object]:
        if isinstance(node, dict):
            if "schema" in node:
                yield node["schema"]
            for value in node.values():
                yield from schemas(value)
        elif isinstance(node, list):
            for value in node:
                yield from schemas(value)

    found = [*schemas(DOCUMENT["paths"]), *DOCUMENT["components"]["schemas"].values()]
    assert len(found) > 30
    for schema in found:
        jsonschema_rs.meta.validate(schema)


def test_the_api_and_the_dashboard_each_document_their_own_paths_and_schemas() -> None:
    """One document from two parts: the dashboard's paths beside the dashboard, the API's
    beside the API, and neither may shadow a path or a schema of the other."""
    from web import openapi
    from web.dashboard import openapi as dashboard

    assert all(path.startswith("/dashboard/") for path in dashboard.PATHS)
    assert not any(path.startswith("/dashboard") for path in openapi.PATHS)
    assert not set(openapi.SCHEMAS) & set(dashboard.SCHEMAS)
    assert not set(openapi.PATHS) & set(dashboard.PATHS)
    assert DOCUMENT["paths"] == {**openapi.PATHS, **dashboard.PATHS}
    assert DOCUMENT["components"]["schemas"] == {**openapi.SCHEMAS, **dashboard.SCHEMAS}


def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(app) -> None:
    assert contract.routes(app) == contract.documented()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.mark.parametrize("path", list(DOCUMENT["paths"]))
def test_a_method_the_document_does_not_list_answers_405_with_allow_naming_those_it_does(
    client: TestClient, path: str
) -> None:
    listed = contract.documented()[path]
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        if method in listed:
            continue
        resp = client.simulate_request(method, _concrete(path))
        assert resp.status_code == 405, (method, path)
        allowed = {m.strip() for m in resp.headers["allow"].split(",")}
        assert allowed == listed | {"OPTIONS"}


@pytest.mark.parametrize("path", list(DOCUMENT["paths"]))
def test_options_is_answered_by_the_framework_with_the_documented_methods(
    client: TestClient, path: str
) -> None:
    resp = client.simulate_options(_concrete(path))
    assert resp.status_code == 200
    assert {m.strip() for m in resp.headers["allow"].split(",")} == contract.documented()[path]


def _codes(operation: dict, status: str) -> set[str]:
    response = operation["responses"].get(status)
    if response is None:
        return set()
    schema = response["content"]["application/json"]["schema"]
    return set(schema["properties"]["error"]["properties"]["code"]["enum"])


def _mapped_errors() -> list[type[errors.SettleError]]:
    """Every class the mapping table of web/errors.py gives a status, with its subclasses."""
    found: list[type[errors.SettleError]] = []
    pending = [cls for cls, _ in STATUS]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


#: Mapped classes the app never answers with: bases that only group others (their own code is
#: never raised), and conditions raised outside a request.
NEVER_ANSWERED = {
    errors.NotFound,
    errors.TransferRejected,
    errors.Unavailable,
    errors.Unauthenticated,
    errors.ApiKeyNotFound,  # only `settle keys revoke` looks a key up by id
}


def test_every_status_in_the_error_mapping_table_is_documented_for_some_operation() -> None:
    documented = {status for _, _, op in OPERATIONS for status in op["responses"]}
    for _, status in STATUS:
        assert status.split(" ", 1)[0] in documented


@pytest.mark.parametrize(
    "error", [e for e in _mapped_errors() if e not in NEVER_ANSWERED], ids=lambda e: e.__name__
)
def test_every_error_the_app_can_answer_is_documented_with_its_status_and_code(
    error: type[errors.SettleError],
) -> None:
    status = status_of(error()).split(" ", 1)[0]
    documented_in = [f"{m} {p}" for p, m, op in OPERATIONS if error.code in _codes(op, status)]
    assert documented_in, f"{error.__name__} ({status} {error.code}) is documented nowhere"


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=IDS)
def test_each_operation_documents_the_answers_its_shape_implies(
    path: str, method: str, operation: dict
) -> None:
    """Every operation may be turned away (503); one needing a key may be refused it (401)
    or find it over its rate limit (429, and its successes carry the RateLimit headers);
    one naming an id may find nothing (404); one reading a body may find it too large (413),
    not JSON (415) or malformed (400); one taking query parameters may find them wrong."""
    statuses = set(operation["responses"])
    assert "503" in statuses
    needs_key = operation.get("security", DOCUMENT["security"]) != []
    assert needs_key == (path not in PUBLIC)
    if needs_key:
        assert _codes(operation, "401") == {"api_key_missing", "api_key_invalid"}
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    if "security" not in operation:  # an API key's: its rate limit applies
        assert _codes(operation, "429") == {"rate_limited"}
        limited = operation["responses"]["429"]["headers"]
        assert all(limited[h]["required"] for h in ("Retry-After", "RateLimit-Policy", "RateLimit"))
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                assert {"RateLimit-Policy", "RateLimit"} <= set(response["headers"])
    if "{" in path:
        assert "404" in statuses
    if "requestBody" in operation:
        assert {"400", "413", "415"} <= statuses
        assert {"invalid_request", "invalid_json"} <= _codes(operation, "400")
    if any(p["in"] == "query" for p in operation.get("parameters", [])):
        assert "invalid_request" in _codes(operation, "400")
    if path in ("/users", "/accounts") and method == "post":
        assert _codes(operation, "403") == {"operator_only", "read_only_key"}
    assert "Retry-After" in operation["responses"]["503"]["headers"]


# --- The contract check every `client` answer goes through has teeth -------------------

#: Every answer carries its request id; the checks below break something else.
RID = {"x-request-id": "0123456789abcdef"}


def test_the_contract_check_catches_an_undocumented_status(app) -> None:
    body = b'{"error":{"code":"teapot","message":"short and stout"}}'
    problem = contract.violation(app, "GET", "/users/1", 418, RID, body)
    assert problem is not None and "not documented" in problem


def test_the_contract_check_catches_an_undocumented_error_code(app) -> None:
    body = b'{"error":{"code":"account_not_found","message":"wrong route for this code"}}'
    problem = contract.violation(app, "GET", "/users/1", 404, RID, body)
    assert problem is not None and "does not allow" in problem


def test_the_contract_check_catches_a_body_that_breaks_the_schema(app) -> None:
    body = b'{"data":{"id":1,"email":"a@b.cd","name":"Ada","created_at":"x","admin":true}}'
    problem = contract.violation(app, "GET", "/users/1", 200, RID, body)
    assert problem is not None and "does not allow" in problem


def test_the_contract_check_catches_a_missing_documented_header(app) -> None:
    body = b'{"error":{"code":"database_busy","message":"busy"}}'
    problem = contract.violation(app, "GET", "/users/1", 503, RID, body)
    assert problem is not None and "Retry-After" in problem
    assert (
        contract.violation(app, "GET", "/users/1", 503, {**RID, "retry-after": "1"}, body) is None
    )


def test_the_contract_check_accepts_a_documented_answer(app) -> None:
    body = b'{"data":{"id":1,"email":"a@b.cd","name":"Ada","created_at":"2024-01-01T00:00:00Z"}}'
    assert contract.violation(app, "GET", "/users/1", 200, RID, body) is None


def test_the_contract_check_catches_an_answer_without_its_request_id(app) -> None:
    body = b'{"data":{"id":1,"email":"a@b.cd","name":"Ada","created_at":"2024-01-01T00:00:00Z"}}'
    problem = contract.violation(app, "GET", "/users/1", 200, {}, body)
    assert problem is not None and "X-Request-Id" in problem


def test_the_contract_check_holds_a_text_answer_to_its_documented_media_type(app) -> None:
    text = b"# HELP x y\n"
    headers = {**RID, "content-type": "application/json"}
    problem = contract.violation(app, "GET", "/metrics", 200, headers, text)
    assert problem is not None and "text/plain" in problem
    headers["content-type"] = "text/plain; version=0.0.4; charset=utf-8"
    assert contract.violation(app, "GET", "/metrics", 200, headers, text) is None
