"""The dashboard's JSON twin under /dashboard/api: the same data and actions as the pages,
for scripts. An operator key as `Authorization: Bearer` (read-only keys read, and get 403
`read_only_key` for actions), or the dashboard's session cookie with its CSRF token in
`X-CSRF-Token` for what changes something. Documented in `web/dashboard/openapi.py`."""

from __future__ import annotations

from typing import Any

import falcon

from shared.db import Row
from shared.db.pool import connection
from shared.errors import InvalidCursor
from shared.ledger import attention, commands, operator_actions
from shared.ledger.operations import decode_cursor, encode_cursor
from shared.webhooks import operator
from web.dashboard import actions, pages
from web.dashboard.resource import Resource
from web.resources import read_json


class _Api(Resource):
    """Authenticated by `Access.api_principal`: an operator key, or a session."""

    def _acting(self, req: falcon.Request) -> operator_actions.Acting:
        """Who a request that acts on transfers acts as. Raises what `api_principal` and
        `require_acting` raise."""
        return operator_actions.require_acting(self._access.api_principal(req, changes=True))

    def _one(self, req: falcon.Request, transfer_id: str, act: actions.OneAction, done: str) -> Any:
        """Do `act` (`actions.retry_one` or `cancel_one`) to one transfer; the answer's data
        says whether it was `done` (the flag's name), with any notice."""
        by = self._acting(req)
        tid = actions.transfer_id(transfer_id)
        did, notice = act(self._pool, tid, by, broker=self._broker)
        return {"data": {"id": tid, done: did, "notice": notice}}


class Overview(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, ())
        resp.media = {"data": self._overview.gather()}


def _listed(row: Row) -> Row:
    return {k: row[k] for k in TRANSFER_FIELDS}


TRANSFER_FIELDS = (
    "id",
    "status",
    "state",
    "from_account_id",
    "from_user_id",
    "to_account_id",
    "to_user_id",
    "amount",
    "currency",
    "attempts",
    "failure_code",
    "last_error",
    "created_at",
    "dead_lettered_at",
    "settled_at",
    "age_seconds",
)


def _filter(req: falcon.Request, *, paging: bool) -> attention.TransferFilter:
    """The filter of the query string (with `paging`: beside limit and cursor). Raises
    `InvalidRequest` naming any other parameter."""
    allowed = (*attention.FILTER_FIELDS, *(pages.PAGING if paging else ()))
    params = pages.query_params(req, allowed)
    return attention.transfer_filter(
        {k: v for k, v in params.items() if k not in pages.PAGING}, strict=True
    )


class Transfers(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.api_principal(req, changes=False)
        wanted = _filter(req, paging=True)
        limit = commands.limit(req.get_param("limit"))
        with connection(self._pool) as conn:
            found = attention.needing_attention(
                conn,
                wanted,
                stuck_after_seconds=self._threshold,
                limit=limit,
                cursor=req.get_param("cursor"),
            )
        resp.media = {"data": [_listed(r) for r in found.items], "next_cursor": found.next_cursor}


class TransferCount(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.api_principal(req, changes=False)
        wanted = _filter(req, paging=False)
        with connection(self._pool) as conn:
            counts = attention.count_matching(conn, wanted, stuck_after_seconds=self._threshold)
        resp.media = {"data": counts}


class Transfer(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, ())
        tid = actions.transfer_id(transfer_id)
        with connection(self._pool) as conn:
            resp.media = {"data": attention.transfer_detail(conn, tid)}


class RetryOne(_Api):
    def on_post(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        resp.media = self._one(req, transfer_id, actions.retry_one, "retried")


class Cancel(_Api):
    def on_post(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        resp.media = self._one(req, transfer_id, actions.cancel_one, "cancelled")


class BulkRetry(_Api):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        by = self._acting(req)
        wanted = attention.transfer_filter_from_json(read_json(req, self._settings.max_body_bytes))
        sent, batches, notice = actions.bulk_retry(self._pool, wanted, by, broker=self._broker)
        with connection(self._pool) as conn:
            left = attention.count_matching(conn, wanted, stuck_after_seconds=self._threshold)
        resp.media = {
            "data": {
                "sent": sent,
                "batches": batches,
                "remaining": left["retryable"],
                "notice": notice,
            }
        }


class Actions(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, pages.PAGING)
        limit = commands.limit(req.get_param("limit"))
        cursor = req.get_param("cursor")
        before = decode_cursor(cursor) if cursor else None
        if before is not None and before < 1:
            raise InvalidCursor("cursor was not issued by this service")
        with connection(self._pool) as conn:
            rows = operator_actions.recent(conn, limit=limit + 1, before=before)
        more = len(rows) > limit
        rows = rows[:limit]
        resp.media = {
            "data": rows,
            "next_cursor": encode_cursor(rows[-1]["id"]) if more else None,
        }


class Webhooks(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, ("limit",))
        limit = commands.limit(req.get_param("limit"), default=100)
        with connection(self._pool) as conn:
            rows, total = operator.endpoints(conn, limit=limit)
        resp.media = {"data": rows, "total": total}


class WebhookEndpoint(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, ())
        eid = actions.endpoint_id(endpoint_id)
        with connection(self._pool) as conn:
            resp.media = {"data": operator.endpoint(conn, eid)}


class WebhookDeliveries(_Api):
    def on_get(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        self._access.api_principal(req, changes=False)
        params = pages.query_params(req, ("status", *pages.PAGING))
        eid = actions.endpoint_id(endpoint_id)
        status = operator.status_filter(params.get("status"))
        limit = commands.limit(req.get_param("limit"))
        before = pages.before_of(params.get("cursor"))
        with connection(self._pool) as conn:
            found = operator.deliveries(conn, eid, status=status, limit=limit, before=before)
        resp.media = {"data": found.items, "next_cursor": found.next_cursor}


class WebhookDelivery(_Api):
    def on_get(
        self, req: falcon.Request, resp: falcon.Response, endpoint_id: str, delivery_id: str
    ) -> None:
        self._access.api_principal(req, changes=False)
        pages.query_params(req, ())
        eid, did = actions.endpoint_id(endpoint_id), actions.delivery_id(delivery_id)
        with connection(self._pool) as conn:
            resp.media = {"data": operator.delivery(conn, did, endpoint_id=eid)}


class WebhookRetryOne(_Api):
    def on_post(
        self, req: falcon.Request, resp: falcon.Response, endpoint_id: str, delivery_id: str
    ) -> None:
        by = self._acting(req)
        pages.query_params(req, ())
        eid, did = actions.endpoint_id(endpoint_id), actions.delivery_id(delivery_id)
        retried = actions.retry_delivery(
            self._pool, eid, did, by, retry_hours=self._settings.webhook_retry_hours
        )
        resp.media = {"data": {"id": did, "retried": retried}}


class WebhookRetryFailed(_Api):
    def on_post(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        by = self._acting(req)
        pages.query_params(req, ())
        eid = actions.endpoint_id(endpoint_id)
        retried = actions.retry_endpoint(
            self._pool, eid, by, retry_hours=self._settings.webhook_retry_hours
        )
        resp.media = {"data": {"endpoint_id": eid, "retried": retried}}
