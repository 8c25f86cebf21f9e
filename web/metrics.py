"""Per-request series and ids, and `GET /metrics`.

`RequestTelemetry` is the outermost middleware: it gives every request an id (the client's
`X-Request-Id` when it is well formed, a new one otherwise), echoes it on the answer, binds
it to the log lines of the request, and counts the answer by route template (never the raw
path: `/users/7` and `/users/8` are one series; a path no route matches counts as
`unmatched`) with its duration.

`MetricsResource` answers only an operator key (any operator key), as `Authorization:
Bearer`; the API key middleware has already authenticated the request; a user's key is
refused with 401 like a bad key, since the endpoint is not part of the API a user sees.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import falcon
from prometheus_client import Counter, Histogram

from shared.errors import ApiKeyInvalid
from shared.runtime import logs
from shared.runtime.metrics import CONTENT_TYPE, OverviewCollector, render
from web.auth import principal

REQUEST_ID_HEADER = "X-Request-Id"
#: What a client may send as its request id: short, printable, no spaces or quotes.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "settle_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "settle_http_request_duration_seconds",
    "Time from the request reaching the app to its answer being ready, by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

RATE_LIMITED = Counter(
    "settle_rate_limited",
    "Requests refused with 429 because their API key was over its rate limit, by route"
    " template (`overloaded`: refused by the load shedder, before routing)",
    ["route"],
)
RATE_LIMIT_UNCHECKED = Counter(
    "settle_rate_limit_unchecked",
    "Requests let through without a rate-limit check because Redis did not answer",
)
#: The `route` of a 429 the load shedder answers (`web.server.shed_load`).
SHED_ROUTE = "overloaded"

#: Methods counted under their own name; anything else (WebDAV verbs, garbage) is `other`,
#: so a client cannot make new series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_request_id() -> str:
    """A fresh request id: 32 hex characters, 128 random bits. Not `uuid.uuid4().hex`, which
    builds a UUID object (an int, its version bits) only to print it again: 3% of a web
    process's time on `/healthz` under wrk."""
    return os.urandom(16).hex()


def request_id_of(header: str | None) -> str:
    """The client's id when well formed, else a new one."""
    if header is not None and REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


class RequestTelemetry:
    """Falcon middleware: request id, log binding, and the per-request series.

    The series' children are looked up once per (route, method, status) and kept:
    `labels(...)` takes the metric's lock and checks its arguments on every call, which cost
    about as much as the increments themselves. The keys are bounded (route templates, the
    methods above and the statuses the app answers)."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}
        self._limited: dict[str, Any] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = request_id_of(req.get_header(REQUEST_ID_HEADER))
        req.context.request_id = rid
        req.context.started = time.perf_counter()
        req.context.log_token = logs.request_id.set(rid)
        resp.set_header(REQUEST_ID_HEADER, rid)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        rid = getattr(req.context, "request_id", None)
        if rid is None:  # process_request did not run (Falcon failed before it)
            rid = new_request_id()
        resp.set_header(REQUEST_ID_HEADER, rid)
        started = getattr(req.context, "started", None)
        route = req.uri_template or UNMATCHED
        method = req.method if req.method in METHODS else "other"
        status = resp.status_code
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[route, method, status] = REQUESTS.labels(
                route, method, str(status)
            )
        counter.inc()
        if status == 429:
            limited = self._limited.get(route)
            if limited is None:
                limited = self._limited[route] = RATE_LIMITED.labels(route)
            limited.inc()
        if started is not None:
            timer = self._timers.get((route, method))
            if timer is None:
                timer = self._timers[route, method] = DURATION.labels(route, method)
            timer.observe(time.perf_counter() - started)
        token = getattr(req.context, "log_token", None)
        if token is not None:
            logs.request_id.reset(token)
            req.context.log_token = None


class MetricsResource:
    """`GET /metrics`: the Prometheus exposition text (operator keys only)."""

    def __init__(self, collector: OverviewCollector) -> None:
        self._collector = collector

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not principal(req).is_operator:
            raise ApiKeyInvalid("/metrics needs an operator API key")
        resp.content_type = CONTENT_TYPE
        resp.data = render(self._collector)
