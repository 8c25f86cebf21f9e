"""The one place where domain errors become HTTP responses.

Falcon's error handlers answer through `_answer`; `render` gives WSGI code that answers
before Falcon runs (a load shedder in front of the app) the same status, headers and body,
as bytes.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any

import falcon
import psycopg

from shared import errors
from shared.db.pool import TRANSIENT
from shared.ratelimit.buckets import Decision
from web import ratelimit

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.SettleError], str]] = [
    (errors.TransferRejected, falcon.HTTP_422),
    (errors.IdempotencyKeyReused, falcon.HTTP_422),
    (errors.BatchRefused, falcon.HTTP_422),
    (errors.InvalidRequest, falcon.HTTP_400),
    (errors.Unauthenticated, falcon.HTTP_401),
    (errors.OperatorOnly, falcon.HTTP_403),
    (errors.ReadOnlyKey, falcon.HTTP_403),
    (errors.CsrfRefused, falcon.HTTP_403),
    (errors.UnsupportedMediaType, falcon.HTTP_415),
    (errors.BodyTooLarge, falcon.HTTP_413),
    (errors.NotFound, falcon.HTTP_404),
    (errors.CursorExpired, falcon.HTTP_410),
    (errors.EmailTaken, falcon.HTTP_409),
    (errors.TooManyWebhookEndpoints, falcon.HTTP_409),
    (errors.RateLimited, falcon.HTTP_429),
    (errors.Unavailable, falcon.HTTP_503),
    (errors.WebhooksUnconfigured, falcon.HTTP_503),
]


def status_of(error: errors.SettleError) -> str:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return falcon.HTTP_500


def headers_of(error: errors.SettleError) -> list[tuple[str, str]]:
    """The headers an answer for `error` carries besides its content type."""
    if isinstance(error, errors.Unauthenticated):
        return [("WWW-Authenticate", www_authenticate(error))]
    if isinstance(error, errors.Unavailable):
        return [("Retry-After", str(error.retry_after))]
    if isinstance(error, errors.RateLimited):
        decision = error.decision
        assert isinstance(decision, Decision)
        return [("Retry-After", str(decision.retry_after)), *ratelimit.headers(decision)]
    return []


def body_of(error: errors.SettleError) -> dict[str, object]:
    """The JSON body of an answer for `error`: `{"error": {"code", "message"}}`."""
    return {"error": {"code": error.code, "message": error.message}}


def render(error: errors.SettleError) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers, body) answering `error`, for a WSGI `start_response`."""
    body = json.dumps(body_of(error), separators=(",", ":")).encode()
    headers = [
        ("Content-Type", falcon.MEDIA_JSON),
        ("Content-Length", str(len(body))),
        *headers_of(error),
    ]
    return status_of(error), headers, body


def _answer(resp: falcon.Response, error: errors.SettleError) -> None:
    resp.status = status_of(error)
    for name, value in headers_of(error):
        resp.set_header(name, value)
    resp.media = body_of(error)


#: The answer to a failure the client did not cause and cannot retry around.
INTERNAL_ERROR = errors.SettleError("internal error")


def handle_settle_error(
    req: falcon.Request, resp: falcon.Response, ex: errors.SettleError, params: Any
) -> None:
    if isinstance(ex, errors.Unavailable):
        log.warning("%s %s -> %s %s", req.method, req.path, ex.code, ex.message)
    _answer(resp, ex)


def www_authenticate(ex: errors.Unauthenticated) -> str:
    """The challenge of a 401 (RFC 6750): a bad key is an `invalid_token`, no key is not."""
    if isinstance(ex, errors.ApiKeyMissing):
        return 'Bearer realm="settle"'
    return 'Bearer realm="settle", error="invalid_token"'


def handle_database_error(
    req: falcon.Request, resp: falcon.Response, ex: psycopg.Error, params: Any
) -> None:
    """A deadlock, serialization failure, timeout or lost connection that escaped a use case:
    the request may succeed if retried, so it is a 503, never a 500."""
    if isinstance(ex, TRANSIENT):
        log.warning("%s %s -> transient database error: %s", req.method, req.path, ex)
        _answer(resp, errors.DatabaseUnavailable("the database is busy; retry"))
        return
    log.exception("%s %s -> database error", req.method, req.path)
    _answer(resp, INTERNAL_ERROR)


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    log.exception("%s %s -> unexpected error", req.method, req.path)
    _answer(resp, INTERNAL_ERROR)


def serialize_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Falcon's own errors (unknown route, wrong method, a malformed header) in this API's error
    shape, with a code that depends on the status only: a 400 is `invalid_request` like ours,
    others are named after their status (404 -> `not_found`)."""
    if ex.status_code == 400:
        code = errors.InvalidRequest.code
    else:
        # The title is free text ("Invalid header value"); the status phrase is stable.
        code = http.HTTPStatus(ex.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"error": {"code": code, "message": ex.description or ex.title or code}}
