"""The dashboard's JSON twin in the OpenAPI document: its paths, and the schemas only they
use. `web/openapi.py` puts them beside the API's in one document, which the tests hold the
app to (tests/integration/test_openapi.py)."""

from __future__ import annotations

from typing import Any

from shared.events.feed import TYPES
from shared.ledger.money import MAX_AMOUNT
from shared.webhooks.operator import STATUSES
from web.openapi_parts import (
    AMOUNT,
    BAD_BODY,
    BODY_TOO_LARGE,
    CURRENCY,
    ID,
    NOT_JSON,
    PAGE_PARAMETERS,
    RETRY_AFTER,
    TEXT_PATTERN,
    TIMESTAMP,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Schema,
    body,
    data,
    error,
    obj,
    ok,
    page_of,
    path_id,
    ref,
)

#: The dashboard's JSON twin: an operator key, or the dashboard's session cookie.
SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"session": []}]
SECURITY_SCHEMES: dict[str, Any] = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "settle_dashboard",
        "description": "the dashboard's session (POST /dashboard/login); requests that"
        " change something also send its CSRF token as `X-CSRF-Token`",
    },
}

SCHEMAS: dict[str, Schema] = {
    "DashboardTransfer": obj(
        {
            "id": ID,
            "status": {"enum": ["pending", "settled", "failed"]},
            "state": {
                "enum": ["dead-lettered", "pending", "settled", "failed"],
                "description": "its status, or dead-lettered when its retries ran out (it is"
                " pending and waits for an operator)",
            },
            "from_account_id": ID,
            "from_user_id": ID,
            "to_account_id": ID,
            "to_user_id": ID,
            "amount": AMOUNT,
            "currency": CURRENCY,
            "attempts": {"type": "integer", "minimum": 0},
            "failure_code": {"type": ["string", "null"]},
            "last_error": {"type": ["string", "null"]},
            "created_at": TIMESTAMP,
            "dead_lettered_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "settled_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "age_seconds": {"type": "number"},
        }
    ),
    "OperatorAction": obj(
        {
            "id": ID,
            "key_id": {"type": ["integer", "null"]},
            "key_label": {"type": ["string", "null"]},
            "action": {"enum": ["retry", "cancel", "retry_webhook"]},
            "transfer_ids": {"type": "array", "items": ID},
            "detail": {"type": "string"},
            "created_at": TIMESTAMP,
            "webhook_endpoint_id": {
                "type": ["integer", "null"],
                "description": "the endpoint of a retry_webhook (null for the others)",
            },
            "webhook_delivery_ids": {
                "type": "array",
                "items": ID,
                "description": "the deliveries a retry_webhook set pending again",
            },
        }
    ),
    "TransferFilter": obj(
        {
            "state": {"enum": ["attention", "dead", "failed", "stuck"], "default": "attention"},
            "account": {**ID, "description": "the source or the destination account"},
            "user": {**ID, "description": "the owner of the source or destination account"},
            "currency": CURRENCY,
            "min_amount": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT},
            "max_amount": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT},
            "failure_code": {"type": "string", "pattern": "^[a-z_]{1,64}$"},
            "error": {
                "type": "string",
                "maxLength": 200,
                "pattern": TEXT_PATTERN,
                "description": "text found in the last error",
            },
            "older_than_minutes": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
        },
        optional=(
            "state",
            "account",
            "user",
            "currency",
            "min_amount",
            "max_amount",
            "failure_code",
            "error",
            "older_than_minutes",
        ),
    ),
}

COUNT: Schema = {"type": "integer", "minimum": 0}
NULLABLE_TIMESTAMP: Schema = {"oneOf": [TIMESTAMP, {"type": "null"}]}
NULLABLE_TEXT: Schema = {"type": ["string", "null"]}
NULLABLE_STATUS_CODE: Schema = {"type": ["integer", "null"]}
EVENT_TYPE: Schema = {"enum": list(TYPES)}
DELIVERY_STATUS: Schema = {"enum": list(STATUSES)}
SCHEMAS["WebhookEndpointHealth"] = obj(
    {
        "id": ID,
        "url": {"type": "string"},
        "user_id": {"type": ["integer", "null"], "description": "null: an operator's endpoint"},
        "event_types": {"type": "array", "items": EVENT_TYPE},
        "created_at": TIMESTAMP,
        "failed": {**COUNT, "description": "deliveries given up (no 2xx in the retry window)"},
        "retrying": {**COUNT, "description": "pending deliveries with a failed attempt"},
        "pending": {**COUNT, "description": "deliveries not yet made (retrying included)"},
        "last_attempt_at": NULLABLE_TIMESTAMP,
        "last_attempt_status_code": NULLABLE_STATUS_CODE,
        "last_status_code": {
            **NULLABLE_STATUS_CODE,
            "description": "of the newest pending or failed delivery attempted",
        },
        "last_error": {
            **NULLABLE_TEXT,
            "description": "of the newest pending or failed delivery attempted",
        },
    }
)
SCHEMAS["WebhookEndpointDetail"] = obj(
    {
        "id": ID,
        "url": {"type": "string"},
        "user_id": {"type": ["integer", "null"]},
        "event_types": {"type": "array", "items": EVENT_TYPE},
        "created_at": TIMESTAMP,
        "deleted_at": NULLABLE_TIMESTAMP,
        "counts": obj({status: COUNT for status in STATUSES}),
    }
)
_DELIVERY: dict[str, Schema] = {
    "id": ID,
    "endpoint_id": ID,
    "event_id": ID,
    "event_type": EVENT_TYPE,
    "status": DELIVERY_STATUS,
    "attempts": COUNT,
    "next_attempt_at": TIMESTAMP,
    "retry_until": TIMESTAMP,
    "last_status_code": NULLABLE_STATUS_CODE,
    "last_error": NULLABLE_TEXT,
    "created_at": TIMESTAMP,
    "finished_at": NULLABLE_TIMESTAMP,
}
SCHEMAS["WebhookDelivery"] = obj(_DELIVERY)
SCHEMAS["WebhookDeliveryDetail"] = obj(
    {
        **_DELIVERY,
        "body": {"type": "string", "description": "the JSON sent, as sent"},
        "attempts_made": {
            "type": "array",
            "items": obj(
                {
                    "id": ID,
                    "attempted_at": TIMESTAMP,
                    "status_code": NULLABLE_STATUS_CODE,
                    "latency_ms": COUNT,
                    "error": NULLABLE_TEXT,
                }
            ),
        },
    }
)
NULLABLE_COUNT: Schema = {"type": ["integer", "null"], "minimum": 0}
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
SCHEMAS["TransferDetail"] = {
    "type": "object",
    "properties": {
        **SCHEMAS["DashboardTransfer"]["properties"],
        "idempotency_scope": {"type": "string"},
        "idempotency_key": {"type": "string"},
        "enqueued_at": TIMESTAMP,
        "finished_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
        "metadata": ref("Metadata"),
        "entries": {"type": "array", "items": ref("Entry")},
        "actions": {
            "type": "array",
            "items": obj(
                {
                    "id": ID,
                    "key_id": {"type": ["integer", "null"]},
                    "key_label": {"type": ["string", "null"]},
                    "action": {"enum": ["retry", "cancel"]},
                    "detail": {"type": "string"},
                    "created_at": TIMESTAMP,
                    "transfers": {"type": "integer", "minimum": 1},
                }
            ),
        },
    },
    "required": [*SCHEMAS["DashboardTransfer"]["required"], "metadata", "entries", "actions"],
    "additionalProperties": False,
}
SCHEMAS["Overview"] = obj(
    {
        "queues": {
            "oneOf": [
                obj(
                    {
                        "ready": COUNT,
                        "delayed": COUNT,
                        "in_flight": COUNT,
                        "dead": COUNT,
                    }
                ),
                {"type": "null"},
            ]
        },
        "queue_error": {"type": ["string", "null"]},
        "transfers": obj(
            {"pending": COUNT, "settled": COUNT, "failed": COUNT, "dead_lettered": COUNT}
        ),
        "transfers_exact": {
            "type": "boolean",
            "description": "false on a large ledger: settled and failed are estimates",
        },
        "oldest_pending_seconds": {"type": "number", "minimum": 0},
        "last_hour": {
            "type": "array",
            "items": obj(
                {
                    "minute": TIMESTAMP,
                    "settled": COUNT,
                    "failed": COUNT,
                    "p50_ms": NULLABLE_NUMBER,
                    "p99_ms": NULLABLE_NUMBER,
                }
            ),
        },
        "workers": {
            "type": "array",
            "items": obj(
                {
                    "holder": {"type": "string"},
                    "role": {"type": "string"},
                    "wanted": COUNT,
                    "granted": COUNT,
                    "connected": COUNT,
                    "busy": COUNT,
                    "acquired_at": TIMESTAMP,
                    "heartbeat_at": TIMESTAMP,
                }
            ),
        },
        "budget": obj(
            {
                "available": {"type": "integer"},
                "source": {"type": "string"},
                "refusal": {"type": ["string", "null"]},
                "roles": {
                    "type": "array",
                    "items": obj(
                        {
                            "role": {"type": "string"},
                            "planned": NULLABLE_COUNT,
                            "leased": COUNT,
                            "connected": COUNT,
                        }
                    ),
                },
            }
        ),
    }
)

ACTION_UNAVAILABLE = error(
    "the database or the web process is saturated or unreachable, or the message broker does"
    " not answer (broker_unavailable: nothing was changed); retry after Retry-After",
    "database_busy",
    "database_unavailable",
    "overloaded",
    "broker_unavailable",
    **{"Retry-After": RETRY_AFTER},
)
READ_FORBIDDEN = error("the API key is a user's; the dashboard is for operators", "operator_only")
ACTION_FORBIDDEN = error(
    "the API key is a user's or a read-only operator key's, or a session request came without"
    " its CSRF token in X-CSRF-Token",
    "operator_only",
    "read_only_key",
    "csrf_token_invalid",
)
FILTER_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": name,
        "in": "query",
        "description": description,
        "schema": SCHEMAS["TransferFilter"]["properties"][name],
    }
    for name, description in (
        (
            "state",
            "attention (dead-lettered, failed, or pending past the threshold) or one of them",
        ),
        ("account", "the source or the destination account"),
        ("user", "the owner of the source or destination account"),
        ("currency", "the transfer's currency"),
        ("min_amount", "at least this amount (minor units)"),
        ("max_amount", "at most this amount (minor units)"),
        ("failure_code", "this failure code"),
        ("error", "text found in the last error"),
        ("older_than_minutes", "accepted longer ago than this"),
    )
]

TRANSFER_404 = error("no such transfer", "transfer_not_found")

BAD_FILTER = error(
    "a filter value, limit or cursor is malformed, or a parameter is unknown or repeated",
    "invalid_request",
    "invalid_cursor",
)


def action_done(flag: str) -> Schema:
    return data(obj({"id": ID, flag: {"type": "boolean"}, "notice": {"type": ["string", "null"]}}))


PATHS: dict[str, dict[str, Any]] = {
    "/dashboard/api/overview": {
        "get": {
            "operationId": "dashboardOverview",
            "summary": "Queues, transfers by status, the last hour, processes and the budget",
            "security": SECURITY,
            "responses": {
                "200": ok("the overview", data(ref("Overview"))),
                "401": UNAUTHENTICATED,
                "403": READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers": {
        "get": {
            "operationId": "dashboardTransfers",
            "summary": "Transfers needing attention matching a filter, by ascending id",
            "security": SECURITY,
            "parameters": [*FILTER_PARAMETERS, *PAGE_PARAMETERS],
            "responses": {
                "200": ok("a page of transfers", page_of("DashboardTransfer")),
                "400": BAD_FILTER,
                "401": UNAUTHENTICATED,
                "403": READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/count": {
        "get": {
            "operationId": "dashboardTransferCount",
            "summary": "How many transfers match a filter, and how many a bulk retry would send",
            "security": SECURITY,
            "parameters": FILTER_PARAMETERS,
            "responses": {
                "200": ok(
                    "the counts",
                    data(obj({"matching": COUNT, "retryable": COUNT})),
                ),
                "400": BAD_FILTER,
                "401": UNAUTHENTICATED,
                "403": READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/retry": {
        "post": {
            "operationId": "dashboardBulkRetry",
            "summary": "Retry every dead-lettered transfer matching a filter, in batches",
            "description": "Works through the matching dead letters a batch per transaction"
            " (each recorded as an operator action) for up to 20 seconds; `remaining` says how"
            " many still match, for another call.",
            "security": SECURITY,
            "requestBody": body("TransferFilter"),
            "responses": {
                "200": ok(
                    "what was sent again",
                    data(
                        obj(
                            {
                                "sent": COUNT,
                                "batches": COUNT,
                                "remaining": COUNT,
                                "notice": {"type": ["string", "null"]},
                            }
                        )
                    ),
                ),
                "400": error("the filter is malformed", *BAD_BODY),
                "401": UNAUTHENTICATED,
                "403": ACTION_FORBIDDEN,
                "413": BODY_TOO_LARGE,
                "415": NOT_JSON,
                "503": ACTION_UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/{transfer_id}": {
        "get": {
            "operationId": "dashboardTransfer",
            "summary": "One transfer: every field, its entries and the operator actions on it",
            "security": SECURITY,
            "parameters": [path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("the transfer", data(ref("TransferDetail"))),
                "401": UNAUTHENTICATED,
                "403": READ_FORBIDDEN,
                "404": TRANSFER_404,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/{transfer_id}/retry": {
        "post": {
            "operationId": "dashboardRetry",
            "summary": "Send a dead-lettered transfer again (anything else: nothing happens)",
            "security": SECURITY,
            "parameters": [path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("whether it was sent again", action_done("retried")),
                "401": UNAUTHENTICATED,
                "403": ACTION_FORBIDDEN,
                "404": TRANSFER_404,
                "503": ACTION_UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/{transfer_id}/cancel": {
        "post": {
            "operationId": "dashboardCancel",
            "summary": "End a dead-lettered transfer failed (cancelled_by_operator), moving no"
            " money (anything else: nothing happens)",
            "security": SECURITY,
            "parameters": [path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("whether it was cancelled", action_done("cancelled")),
                "401": UNAUTHENTICATED,
                "403": ACTION_FORBIDDEN,
                "404": TRANSFER_404,
                "503": ACTION_UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/actions": {
        "get": {
            "operationId": "dashboardActions",
            "summary": "The operator action record, newest first",
            "security": SECURITY,
            "parameters": PAGE_PARAMETERS,
            "responses": {
                "200": ok("a page of actions", page_of("OperatorAction")),
                "400": error(
                    "limit is out of range, or cursor was not issued by this service",
                    "invalid_request",
                    "invalid_cursor",
                ),
                "401": UNAUTHENTICATED,
                "403": READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
}


ENDPOINT_404 = error("no such webhook endpoint", "webhook_endpoint_not_found")
DELIVERY_404 = error(
    "no such webhook endpoint, or no such delivery of it",
    "webhook_endpoint_not_found",
    "webhook_delivery_not_found",
)
NO_PARAMETERS = error("a query parameter was sent (this takes none)", "invalid_request")
ENDPOINT_ID = path_id("endpoint_id", "webhook endpoint")
DELIVERY_ID = path_id("delivery_id", "webhook delivery")
#: Retrying needs Postgres only (the dispatcher sends the messages), never the broker.
RETRY_UNAVAILABLE = UNAVAILABLE

PATHS.update(
    {
        "/dashboard/api/webhooks": {
            "get": {
                "operationId": "dashboardWebhooks",
                "summary": "Live webhook endpoints, failing first, with their deliveries counted",
                "description": "Ordered by failed deliveries, then deliveries being retried,"
                " then the latest attempt; `total` counts every live endpoint.",
                "security": SECURITY,
                "parameters": [PAGE_PARAMETERS[0]],
                "responses": {
                    "200": ok(
                        "the endpoints",
                        obj(
                            {
                                "data": {
                                    "type": "array",
                                    "items": ref("WebhookEndpointHealth"),
                                },
                                "total": COUNT,
                            }
                        ),
                    ),
                    "400": error(
                        "limit is out of range, or a parameter is unknown or repeated",
                        "invalid_request",
                    ),
                    "401": UNAUTHENTICATED,
                    "403": READ_FORBIDDEN,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/dashboard/api/webhooks/{endpoint_id}": {
            "get": {
                "operationId": "dashboardWebhookEndpoint",
                "summary": "One webhook endpoint (deleted ones too), its deliveries by status",
                "security": SECURITY,
                "parameters": [ENDPOINT_ID],
                "responses": {
                    "200": ok("the endpoint", data(ref("WebhookEndpointDetail"))),
                    "400": NO_PARAMETERS,
                    "401": UNAUTHENTICATED,
                    "403": READ_FORBIDDEN,
                    "404": ENDPOINT_404,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/dashboard/api/webhooks/{endpoint_id}/deliveries": {
            "get": {
                "operationId": "dashboardWebhookDeliveries",
                "summary": "A webhook endpoint's deliveries, newest first",
                "security": SECURITY,
                "parameters": [
                    ENDPOINT_ID,
                    {
                        "name": "status",
                        "in": "query",
                        "description": "only the deliveries of this status",
                        "schema": DELIVERY_STATUS,
                    },
                    *PAGE_PARAMETERS,
                ],
                "responses": {
                    "200": ok("a page of deliveries", page_of("WebhookDelivery")),
                    "400": BAD_FILTER,
                    "401": UNAUTHENTICATED,
                    "403": READ_FORBIDDEN,
                    "404": ENDPOINT_404,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}": {
            "get": {
                "operationId": "dashboardWebhookDelivery",
                "summary": "One delivery: its body and every attempt, oldest first",
                "security": SECURITY,
                "parameters": [ENDPOINT_ID, DELIVERY_ID],
                "responses": {
                    "200": ok("the delivery", data(ref("WebhookDeliveryDetail"))),
                    "400": NO_PARAMETERS,
                    "401": UNAUTHENTICATED,
                    "403": READ_FORBIDDEN,
                    "404": DELIVERY_404,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry": {
            "post": {
                "operationId": "dashboardWebhookRetry",
                "summary": "Set a failed delivery pending again, with a fresh retry window"
                " (anything else: nothing happens)",
                "description": "Recorded as an operator action. The dispatcher sends it; the"
                " broker is not needed.",
                "security": SECURITY,
                "parameters": [ENDPOINT_ID, DELIVERY_ID],
                "responses": {
                    "200": ok(
                        "whether it was retried",
                        data(obj({"id": ID, "retried": {"type": "boolean"}})),
                    ),
                    "400": NO_PARAMETERS,
                    "401": UNAUTHENTICATED,
                    "403": ACTION_FORBIDDEN,
                    "404": DELIVERY_404,
                    "503": RETRY_UNAVAILABLE,
                },
            }
        },
        "/dashboard/api/webhooks/{endpoint_id}/retry": {
            "post": {
                "operationId": "dashboardWebhookRetryFailed",
                "summary": "Set every failed delivery of a live endpoint pending again",
                "description": "In batches, each recorded as an operator action. The"
                " dispatcher sends them; the broker is not needed.",
                "security": SECURITY,
                "parameters": [ENDPOINT_ID],
                "responses": {
                    "200": ok(
                        "how many were retried",
                        data(obj({"endpoint_id": ID, "retried": COUNT})),
                    ),
                    "400": NO_PARAMETERS,
                    "401": UNAUTHENTICATED,
                    "403": ACTION_FORBIDDEN,
                    "404": error(
                        "no such webhook endpoint, or it was deleted",
                        "webhook_endpoint_not_found",
                    ),
                    "503": RETRY_UNAVAILABLE,
                },
            }
        },
    }
)
