"""Resources of the webhook endpoints: `/webhook-endpoints`, `/webhook-endpoints/{id}` and
`/webhook-endpoints/{id}/rotate-secret` (use cases in `shared.webhooks.endpoints`).

A new endpoint's URL is checked where it leads (`shared.webhooks.addresses.check_host`,
which may resolve a name) before a connection is taken, so that no pooled connection waits
on DNS.
"""

from __future__ import annotations

import falcon
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.pool import connection
from shared.errors import WebhookEndpointNotFound
from shared.ledger.auth import require_writer
from shared.webhooks import addresses, endpoints
from web.auth import principal
from web.resources import path_id, query_params, read_json


class _Resource:
    def __init__(self, pool: ConnectionPool, settings: Settings) -> None:
        self._pool = pool
        self._max_body_bytes = settings.max_body_bytes
        self._secret_key = settings.secret_key
        self._allow_private = settings.webhook_allow_private


def _endpoint_id(raw: str) -> int:
    return path_id(raw, WebhookEndpointNotFound, "webhook endpoint")


class WebhookEndpoints(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit, after = endpoints.endpoint_query(query_params(req))
        with connection(self._pool) as conn:
            page = endpoints.list_endpoints(conn, limit=limit, after=after, by=principal(req))
        resp.media = {"data": page.items, "next_cursor": page.next_cursor}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = principal(req)
        require_writer(by)  # before the body, as for the other writes
        new = endpoints.endpoint_request(read_json(req, self._max_body_bytes))
        addresses.check_host(new.target, allow_private=self._allow_private)
        with connection(self._pool) as conn:
            created = endpoints.create_endpoint(conn, new, by=by, secret_key=self._secret_key)
        resp.status = falcon.HTTP_201
        resp.location = f"/webhook-endpoints/{created['id']}"
        resp.media = {"data": created}


class WebhookEndpoint(_Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        eid = _endpoint_id(endpoint_id)
        with connection(self._pool) as conn:
            resp.media = {"data": endpoints.get_endpoint(conn, eid, by=principal(req))}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        require_writer(principal(req))
        eid = _endpoint_id(endpoint_id)
        with connection(self._pool) as conn:
            endpoints.delete_endpoint(conn, eid, by=principal(req))
        resp.status = falcon.HTTP_204


class WebhookEndpointSecret(_Resource):
    """`POST /webhook-endpoints/{id}/rotate-secret`: a new secret, shown once; the one it
    replaces stays valid for 24 hours."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        require_writer(principal(req))
        eid = _endpoint_id(endpoint_id)
        with connection(self._pool) as conn:
            rotated = endpoints.rotate_secret(
                conn, eid, by=principal(req), secret_key=self._secret_key
            )
        resp.media = {"data": rotated}
