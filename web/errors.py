"""The one place where domain errors become HTTP responses."""

from __future__ import annotations

import http
import logging
from typing import Any

import falcon
import psycopg

from shared import errors
from shared.db.pool import TRANSIENT

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.SettleError], str]] = [
    (errors.TransferRejected, falcon.HTTP_422),
    (errors.IdempotencyKeyReused, falcon.HTTP_422),
    (errors.InvalidRequest, falcon.HTTP_400),
    (errors.Unauthenticated, falcon.HTTP_401),
    (errors.OperatorOnly, falcon.HTTP_403),
    (errors.UnsupportedMediaType, falcon.HTTP_415),
    (errors.BodyTooLarge, falcon.HTTP_413),
    (errors.NotFound, falcon.HTTP_404),
    (errors.EmailTaken, falcon.HTTP_409),
    (errors.Unavailable, falcon.HTTP_503),
]


def status_of(error: errors.SettleError) -> str:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return falcon.HTTP_500


def _write(resp: falcon.Response, status: str, code: str, message: str) -> None:
    resp.status = status
    resp.media = {"error": {"code": code, "message": message}}


def handle_settle_error(
    req: falcon.Request, resp: falcon.Response, ex: errors.SettleError, params: Any
) -> None:
    status = status_of(ex)
    if isinstance(ex, errors.Unauthenticated):
        resp.set_header("WWW-Authenticate", www_authenticate(ex))
    if isinstance(ex, errors.Unavailable):
        resp.set_header("Retry-After", str(ex.retry_after))
        log.warning("%s %s -> %s %s", req.method, req.path, ex.code, ex.message)
    _write(resp, status, ex.code, ex.message)


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
        resp.set_header("Retry-After", "1")
        _write(resp, falcon.HTTP_503, "database_unavailable", "the database is busy; retry")
        return
    log.exception("%s %s -> database error", req.method, req.path)
    _write(resp, falcon.HTTP_500, "internal_error", "internal error")


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    log.exception("%s %s -> unexpected error", req.method, req.path)
    _write(resp, falcon.HTTP_500, "internal_error", "internal error")


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
