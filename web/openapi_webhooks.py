"""The webhooks' part of the OpenAPI document: the `/webhook-endpoints` paths, their schemas,
and the delivery itself under OpenAPI 3.1's `webhooks` (what Settle sends to a receiver).
`web/openapi.py` puts it into `DOCUMENT`. Request schemas say what
`shared/webhooks/endpoints.py` and `shared/webhooks/addresses.py` accept."""

from __future__ import annotations

from typing import Any

from shared.events.feed import TYPES
from shared.webhooks.addresses import MAX_URL_LENGTH
from shared.webhooks.endpoints import MAX_ENDPOINTS
from web.openapi_parts import (
    BAD_BODY,
    BODY_TOO_LARGE,
    ID,
    NOT_JSON,
    PAGE_PARAMETERS,
    RETRY_AFTER,
    TIMESTAMP,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Schema,
    body,
    data,
    error,
    header,
    obj,
    ok,
    page_of,
    path_id,
    ref,
)

_EVENT_TYPES: Schema = {
    "type": "array",
    "items": {"enum": list(TYPES)},
    "minItems": 1,
    "description": "the event types the endpoint receives (a repeated one counts once)",
    "examples": [["transfer.settled", "transfer.failed"]],
}

SCHEMAS: dict[str, Schema] = {
    "WebhookEndpoint": obj(
        {
            "id": ID,
            "url": {"type": "string"},
            "event_types": _EVENT_TYPES,
            "user_id": {
                "oneOf": [ID, {"type": "null"}],
                "description": "the user whose transfers' events it receives; null for an"
                " endpoint made with an operator key, which receives every event",
            },
            "created_at": TIMESTAMP,
            "secret_rotated_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "previous_secret_expires_at": {
                "oneOf": [TIMESTAMP, {"type": "null"}],
                "description": "until when the secret the last rotation replaced still signs"
                " deliveries (a second `v1=`); null when none does",
            },
        }
    ),
    "NewWebhookEndpoint": obj(
        {
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_URL_LENGTH,
                "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$",
                "description": "where events are POSTed: an http or https URL, ASCII, no user"
                " or password, no fragment. Its host may not be, nor resolve to, a private,"
                " loopback, link-local, multicast or reserved address (unless the server"
                " sets WEBHOOK_ALLOW_PRIVATE)",
                "examples": ["https://example.com/settle/webhooks"],
            },
            "event_types": _EVENT_TYPES,
        }
    ),
}
SCHEMAS["WebhookEndpointWithSecret"] = {
    **obj(
        {
            **SCHEMAS["WebhookEndpoint"]["properties"],
            "secret": {
                "type": "string",
                "pattern": "^whsec_[A-Za-z0-9_-]{43}$",
                "description": "the signing secret: shown in this answer only; keep it to"
                " verify `Settle-Signature`",
            },
        }
    ),
}

READ_ONLY = error(
    "the API key is a read-only operator key; it may not change anything", "read_only_key"
)
NOT_FOUND = error(
    "no such endpoint, deleted, or not the key's user's", "webhook_endpoint_not_found"
)
UNCONFIGURED = error(
    "the server has no SECRET_KEY (or not the one the endpoint's secret was made with), so it"
    " cannot make a signing secret: an operator must set it (webhooks_unconfigured, no"
    " Retry-After); or the database or the web process is saturated or unreachable (retry"
    " after Retry-After)",
    "webhooks_unconfigured",
    "database_busy",
    "database_unavailable",
    "overloaded",
    **{"Retry-After": {**RETRY_AFTER, "required": False}},
)

PATHS: dict[str, dict[str, Any]] = {
    "/webhook-endpoints": {
        "get": {
            "operationId": "listWebhookEndpoints",
            "summary": "List the key's webhook endpoints (an operator key: all), oldest first",
            "parameters": PAGE_PARAMETERS,
            "responses": {
                "200": ok("a page of endpoints (without secrets)", page_of("WebhookEndpoint")),
                "400": error(
                    "a query parameter is unknown, given twice, blank or malformed, or cursor"
                    " was not issued by this service for this list",
                    "invalid_request",
                    "invalid_cursor",
                ),
                "401": UNAUTHENTICATED,
                "503": UNAVAILABLE,
            },
        },
        "post": {
            "operationId": "createWebhookEndpoint",
            "summary": "Subscribe a URL to transfer events; the answer holds its signing"
            " secret, shown this once",
            "description": "A user's key subscribes to the events of its user's transfers; an"
            " operator key to every event. Each event of a subscribed type is POSTed to the"
            " URL as JSON (the event as GET /events answers it), with `Settle-Event-Id` and"
            " `Settle-Signature` (see `webhooks` in this document), and retried with backoff"
            f" for about three days until a 2xx answers. At most {MAX_ENDPOINTS} endpoints"
            " per user (and for the operators).",
            "requestBody": body("NewWebhookEndpoint"),
            "responses": {
                "201": ok(
                    "the endpoint and its secret",
                    data(ref("WebhookEndpointWithSecret")),
                    Location=header("where the new endpoint can be read"),
                ),
                "400": error(
                    "the body is malformed, the URL is not an acceptable http(s) URL or its"
                    " host does not resolve (invalid_webhook_url), or it leads to an address"
                    " webhooks are not sent to (webhook_address_refused)",
                    *BAD_BODY,
                    "invalid_webhook_url",
                    "webhook_address_refused",
                ),
                "401": UNAUTHENTICATED,
                "403": READ_ONLY,
                "409": error(
                    f"the owner already has {MAX_ENDPOINTS} endpoints",
                    "too_many_webhook_endpoints",
                ),
                "413": BODY_TOO_LARGE,
                "415": NOT_JSON,
                "503": UNCONFIGURED,
            },
        },
    },
    "/webhook-endpoints/{endpoint_id}": {
        "get": {
            "operationId": "getWebhookEndpoint",
            "summary": "Read a webhook endpoint (never its secret)",
            "parameters": [path_id("endpoint_id", "webhook endpoint")],
            "responses": {
                "200": ok("the endpoint", data(ref("WebhookEndpoint"))),
                "401": UNAUTHENTICATED,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
        },
        "delete": {
            "operationId": "deleteWebhookEndpoint",
            "summary": "Delete a webhook endpoint: nothing more is sent to it, and its"
            " deliveries not yet made are cancelled",
            "parameters": [path_id("endpoint_id", "webhook endpoint")],
            "responses": {
                "204": {"description": "deleted", "headers": {}},
                "401": UNAUTHENTICATED,
                "403": READ_ONLY,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
        },
    },
    "/webhook-endpoints/{endpoint_id}/rotate-secret": {
        "post": {
            "operationId": "rotateWebhookSecret",
            "summary": "Give an endpoint a new signing secret, shown this once; the one it"
            " replaces stays valid for 24 hours",
            "description": "Until `previous_secret_expires_at`, deliveries carry two `v1=`"
            " signatures, one per secret, so a receiver can switch to the new secret at any"
            " time within the day. Rotating again within the day drops the oldest secret.",
            "parameters": [path_id("endpoint_id", "webhook endpoint")],
            "responses": {
                "200": ok(
                    "the endpoint and its new secret", data(ref("WebhookEndpointWithSecret"))
                ),
                "401": UNAUTHENTICATED,
                "403": READ_ONLY,
                "404": NOT_FOUND,
                "503": UNCONFIGURED,
            },
        }
    },
}

#: OpenAPI 3.1 `webhooks`: the request Settle makes to a subscribed URL.
WEBHOOKS: dict[str, Any] = {
    "transferEvent": {
        "post": {
            "operationId": "receiveTransferEvent",
            "summary": "A transfer event, POSTed to a webhook endpoint's URL",
            "description": "Answer any 2xx within 5 seconds to acknowledge; anything else"
            " (another status, a timeout, a refused connection; redirects are not followed)"
            " is retried with exponential backoff and jitter for about three days. Delivery"
            " is at least once: deduplicate by `Settle-Event-Id`. Verify `Settle-Signature`"
            " before trusting the body: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,"
            ' "<t>.<raw body>")>`, with a second `v1=` for 24 hours after a rotation.'
            " docs/examples/webhook_receiver.py in the repository does both.",
            "parameters": [
                {
                    "name": "Settle-Event-Id",
                    "in": "header",
                    "required": True,
                    "description": "the event's id (the same on every attempt)",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                {
                    "name": "Settle-Signature",
                    "in": "header",
                    "required": True,
                    "description": "the timestamp of this attempt and one signature per"
                    " secret in use",
                    "schema": {"type": "string", "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("Event")}},
            },
            "responses": {"2XX": {"description": "received; not sent again"}},
        }
    }
}
