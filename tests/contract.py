"""The OpenAPI document as a contract the tests hold the app to.

`routes` lists what the Falcon app really routes (by walking its router), and `Recorder`
wraps the app so that every response a test provokes is checked against the document: a
documented operation answers only statuses documented for it, with a body that validates
against that response's schema (error codes included); an undocumented method answers 405.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import falcon
import jsonschema_rs

from web.openapi import DOCUMENT

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: Answered by the framework itself, not by a resource: OPTIONS lists `Allow`.
IMPLICIT = {"OPTIONS"}


def is_html_page(template: str) -> bool:
    """The dashboard's HTML pages are for browsers, not part of the JSON API the document
    describes; their JSON twin under /dashboard/api is."""
    return template.startswith("/dashboard") and not template.startswith("/dashboard/api")


def routes(app: falcon.App) -> dict[str, set[str]]:
    """{route template: methods its resource's own responders answer}, from the router.
    Falcon's default responders (405, and OPTIONS) are not the resource's, so not listed."""
    found: dict[str, set[str]] = {}

    def walk(nodes: Iterable[Any]) -> None:
        for node in nodes:
            if node.resource is not None and not is_html_page(node.uri_template):
                found[node.uri_template] = {
                    method
                    for method, responder in node.method_map.items()
                    if getattr(responder, "__self__", None) is node.resource
                }
            walk(node.children)

    walk(app._router._roots)
    return found


def documented() -> dict[str, set[str]]:
    """{path: methods} of the document."""
    return {
        path: {method.upper() for method in item if method in HTTP_METHODS}
        for path, item in DOCUMENT["paths"].items()
    }


_validators: dict[tuple[str, str, str], jsonschema_rs.Validator] = {}


def _validator(path: str, method: str, status: str) -> jsonschema_rs.Validator:
    key = (path, method, status)
    if key not in _validators:
        response = DOCUMENT["paths"][path][method.lower()]["responses"][status]
        schema = response["content"]["application/json"]["schema"]
        # The document's components travel with the schema so that its $refs resolve.
        _validators[key] = jsonschema_rs.validator_for(
            {**schema, "components": DOCUMENT["components"]}
        )
    return _validators[key]


def violation(
    app: falcon.App, method: str, path: str, status: int, headers: dict[str, str], body: bytes
) -> str | None:
    """Why this answer breaks the document, or None when it keeps to it."""
    found = app._router.find(path)
    if found is None:
        return None  # no route: falcon's 404, which no operation owns
    template = found[3]
    if is_html_page(template):
        return None
    operations = DOCUMENT["paths"].get(template)
    what = f"{method} {path} ({template}) answered {status}"
    if operations is None:
        return f"{what}, but the document has no path {template}"
    if method.lower() not in operations:
        if method in IMPLICIT or status in (401, 405):
            return None
        return f"{what}; an undocumented method must answer 405"
    responses = operations[method.lower()]["responses"]
    if str(status) not in responses:
        return f"{what}, which is not documented (documented: {sorted(responses)})"
    response = responses[str(status)]
    for name, header in response.get("headers", {}).items():
        if header.get("required") and name.lower() not in headers:
            return f"{what} without its documented {name} header"
        pattern = header.get("schema", {}).get("pattern")
        given = headers.get(name.lower())
        if pattern is not None and given is not None and not re.search(pattern, given):
            return f"{what} with a {name} header of {given!r}, which is not /{pattern}/"
    if "content" not in response:
        return None
    if "application/json" not in response["content"]:
        media = next(iter(response["content"]))
        given = headers.get("content-type", "")
        if not given.startswith(media):
            return f"{what} with Content-Type {given!r}, not the documented {media}"
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return f"{what} with a body that is not JSON: {body[:200]!r}"
    errors = [e.message for e in _validator(template, method, str(status)).iter_errors(document)]
    if errors:
        return f"{what} with a body the document does not allow: {errors[0]}; body {document}"
    return None


class Recorder:
    """A WSGI wrapper around the app that checks every answer against the document and
    keeps the ones that break it in `violations`."""

    def __init__(self, app: falcon.App) -> None:
        self.app = app
        self.violations: list[str] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        seen: dict[str, Any] = {}

        def recording_start_response(status: str, headers: list[tuple[str, str]], *exc: Any):
            seen["status"] = int(status.split(" ", 1)[0])
            seen["headers"] = {name.lower(): value for name, value in headers}
            return start_response(status, headers, *exc)

        body = b"".join(self.app(environ, recording_start_response))
        problem = violation(
            self.app,
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", "/"),
            seen["status"],
            seen["headers"],
            body,
        )
        if problem:
            self.violations.append(problem)
        return [body]


@contextlib.contextmanager
def held_to_document(app: falcon.App) -> Iterator[Recorder]:
    """`app` wrapped in a `Recorder`; on exit, fails naming every answer that broke the
    document."""
    recorder = Recorder(app)
    yield recorder
    assert recorder.violations == [], "answers that break the OpenAPI document:\n" + "\n".join(
        recorder.violations
    )
