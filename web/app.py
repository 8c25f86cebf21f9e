"""The Falcon application factory: `create_app` takes its collaborators; tests call it directly.

The launcher (`web/server.py`) is the composition root that reads the environment, builds the
pool after the fork and passes it here.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

import falcon
import falcon.media
import orjson
import psycopg
from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.config import Settings
from shared.errors import SettleError
from shared.events.waiting import EventWatch
from shared.ledger.auth import PrincipalCache
from shared.ledger.backlog import BacklogGate
from shared.ratelimit.buckets import Limiter
from shared.runtime.metrics import OverviewCollector
from web import errors, ladder, openapi, resources, webhooks
from web.auth import RequireApiKey
from web.dashboard import add_dashboard
from web.metrics import MetricsResource, RequestTelemetry


def _json_default(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(media: object) -> bytes:
    """`media` as compact JSON. orjson renders an answer several times faster than the json
    module, with the same ISO 8601 datetimes (isoformat(), UTC offset included); it refuses
    strings holding lone surrogates, which an error message may echo from a request, and
    those are escaped by the json module instead."""
    try:
        return orjson.dumps(media)
    except orjson.JSONEncodeError:
        return json.dumps(media, default=_json_default, separators=(",", ":")).encode()


def _one_at_a_time(enqueue: resources.Enqueue) -> resources.EnqueueMany:
    def enqueue_many(transfer_ids: Sequence[int]) -> None:
        for transfer_id in transfer_ids:
            enqueue(transfer_id)

    return enqueue_many


def create_app(
    settings: Settings,
    *,
    pool: ConnectionPool,
    enqueue: resources.Enqueue,
    ping_broker: Callable[[], Any],
    queues: SettleBroker | None = None,
    keys: PrincipalCache | None = None,
    watch: EventWatch | None = None,
    enqueue_many: resources.EnqueueMany | None = None,
    backlog: BacklogGate | None = None,
    limiter: Limiter | None = None,
) -> falcon.App:
    """A WSGI app serving the HTTP contract with `pool` for reads and writes (and API key
    lookups), `enqueue` to hand a transfer id to the workers and `ping_broker` for readiness;
    `/metrics` and the dashboard read the broker's queues through `queues` when given, and
    the dashboard drops the dead letters of transfers it sends again through it (without
    it, it shows no queue, and dead letters expire on their own). Long-polls wait on `watch`
    (without it, they are answered at once). A batch's transfers are queued through
    `enqueue_many` (without it, one `enqueue` at a time). New transfers are admitted by
    `backlog` (default: a gate of `settings.transfer_backlog_max_ms`).
    Every route but /healthz, /readyz and /openapi.json needs an API key; the dashboard's
    pages (/dashboard) need an operator's session instead. A key looked up is
    remembered in `keys` (default: a cache of its own, `settings.api_key_cache_seconds`).
    Each request with a key takes a token of the key's bucket in `limiter` (without it,
    nothing is limited)."""
    if enqueue_many is None:
        enqueue_many = _one_at_a_time(enqueue)
    if keys is None:
        keys = PrincipalCache(settings.api_key_cache_seconds)
    # Telemetry first: it times and counts every answer, refusals by RequireApiKey included.
    middleware: list[Any] = [RequestTelemetry(), RequireApiKey(pool, keys, limiter)]
    app = falcon.App(middleware=middleware)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=dumps)

    body = {"max_body_bytes": settings.max_body_bytes}
    app.add_route("/users", resources.Users(pool, **body))
    app.add_route("/users/me", resources.Me(pool, **body))
    app.add_route("/users/{user_id}", resources.User(pool, **body))
    app.add_route("/accounts", resources.Accounts(pool, **body))
    app.add_route("/accounts/{account_id}", resources.Account(pool, **body))
    app.add_route("/accounts/{account_id}/entries", resources.AccountEntries(pool, **body))
    if backlog is None:
        backlog = BacklogGate(settings.transfer_backlog_max_ms / 1000)
    app.add_route("/transfers", resources.Transfers(pool, enqueue=enqueue, backlog=backlog, **body))
    batch = resources.TransferBatch(
        pool,
        enqueue_many=enqueue_many,
        backlog=backlog,
        max_body_bytes=settings.max_batch_body_bytes,
    )
    app.add_route("/transfers/batch", batch)
    app.add_route("/transfers/{transfer_id}", resources.Transfer(pool, watch=watch, **body))
    app.add_route(
        "/events",
        resources.Events(pool, watch=watch, retention_days=settings.event_retention_days, **body),
    )
    app.add_route("/webhook-endpoints", webhooks.WebhookEndpoints(pool, settings))
    app.add_route("/webhook-endpoints/{endpoint_id}", webhooks.WebhookEndpoint(pool, settings))
    app.add_route(
        "/webhook-endpoints/{endpoint_id}/rotate-secret",
        webhooks.WebhookEndpointSecret(pool, settings),
    )
    app.add_route("/healthz", resources.Health())
    app.add_route("/readyz", resources.Ready(pool, ping_broker, broker=settings.broker))
    app.add_route("/openapi.json", resources.OpenAPIDocument(openapi.DOCUMENT))
    queue_counts = None if queues is None else queues.depths
    overview = OverviewCollector(settings, pool, queue_counts=queue_counts)
    app.add_route("/metrics", MetricsResource(overview))
    add_dashboard(app, settings, pool=pool, enqueue=enqueue, ping_broker=ping_broker, queues=queues)
    if settings.bench_routes:
        ladder.add_ladder(app, pool)

    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(psycopg.Error, errors.handle_database_error)
    app.add_error_handler(SettleError, errors.handle_settle_error)
    app.set_error_serializer(errors.serialize_http_error)
    return app
