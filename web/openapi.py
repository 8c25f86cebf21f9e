"""The OpenAPI 3.1 document of the HTTP API, written as data and served at GET /openapi.json.

Tests keep it true (tests/integration/test_openapi.py): the app has exactly the routes and
methods written here, every status and error code the app can answer is listed under each
operation, every response the test suite provokes is one written here, and schemathesis
fuzzes the app against it. Request schemas say exactly what `shared/ledger/commands.py` accepts, so
that what the document calls valid is accepted and what it calls invalid is refused.
"""

from __future__ import annotations

from typing import Any

from shared.ledger.commands import (
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
)
from shared.ledger.currencies import EXPONENTS, PUBLISHED
from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT

Schema = dict[str, Any]

#: What Python's `str.isspace` (and so `str.strip` and the `\s` of `re`) counts as white
#: space, spelled out: the `\s` of JSON Schema patterns (ECMA-262) is a different set.
_SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
#: Text the service stores: not blank, no NUL (Postgres text cannot hold one).
_TEXT_PATTERN = f"^[^\\u0000]*[^\\u0000{_SPACE}][^\\u0000]*$"
#: `shared.ledger.commands._EMAIL` after surrounding white space is stripped.
_EMAIL_PATTERN = (
    f"^[{_SPACE}]*[^@\\u0000{_SPACE}]+@[^@\\u0000{_SPACE}]+\\.[^@\\u0000{_SPACE}]+[{_SPACE}]*$"
)

ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": BIGINT_MAX}
#: `shared.ledger.commands.metadata_key` and `metadata_value`.
METADATA_KEY: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_METADATA_KEY_LENGTH,
    "pattern": "^[^\\[\\]\\u0000]*$",
}
METADATA_VALUE: Schema = {
    "type": "string",
    "maxLength": MAX_METADATA_VALUE_LENGTH,
    "pattern": "^[^\\u0000]*$",
}
#: A currency as answered: an ISO 4217 code (accounts opened before codes were checked may
#: hold another three-letter code, and keep it).
CURRENCY: Schema = {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["EUR"]}
#: A currency as asked for: one of the ISO 4217 codes Settle accepts.
NEW_CURRENCY: Schema = {"$ref": "#/components/schemas/Currency"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
AMOUNT: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_AMOUNT}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Schema] = {
    "Currency": {
        "type": "string",
        "enum": list(EXPONENTS),
        "examples": ["EUR"],
        "description": "an ISO 4217 currency code with minor units (ISO's table of"
        f" {PUBLISHED.isoformat()}); amounts in it are integers of its minor unit, 10 to the"
        " power of its exponent to one unit: EUR 2 (1250 is 12.50 EUR), JPY 0 (1250 is 1,250"
        " JPY), BHD 3 (1250 is 1.250 BHD)",
    },
    "User": _object(
        {
            "id": ID,
            "email": {"type": "string"},
            "name": {"type": "string"},
            "created_at": TIMESTAMP,
        }
    ),
    "Account": _object(
        {
            "id": ID,
            "user_id": ID,
            "currency": CURRENCY,
            "balance": {"type": "integer", "format": "int64"},
            "allow_negative_balance": {"type": "boolean"},
            "created_at": TIMESTAMP,
        }
    ),
    "Transfer": _object(
        {
            "id": ID,
            "status": {"enum": ["pending", "settled", "failed"]},
            "from_account_id": ID,
            "to_account_id": ID,
            "amount": AMOUNT,
            "currency": CURRENCY,
            "failure_code": {
                "enum": [
                    None,
                    "insufficient_funds",
                    "balance_limit_exceeded",
                    "cancelled_by_operator",
                ]
            },
            "attempts": {"type": "integer", "minimum": 0},
            "created_at": TIMESTAMP,
            "settled_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "dead_lettered_at": {
                "oneOf": [TIMESTAMP, {"type": "null"}],
                "description": "when its retries ran out (it waits in the dead-letter queue"
                " for an operator); null otherwise",
            },
            "metadata": _ref("Metadata"),
        }
    ),
    "Metadata": {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "propertyNames": METADATA_KEY,
        "additionalProperties": METADATA_VALUE,
        "description": f"what the caller attached to the transfer: at most {MAX_METADATA_KEYS}"
        f" keys of 1 to {MAX_METADATA_KEY_LENGTH} characters (no square brackets), each with a"
        f" string of at most {MAX_METADATA_VALUE_LENGTH} characters; `{{}}` when none. It is"
        " part of the request an Idempotency-Key stands for, and `GET /transfers` filters on"
        " it (`metadata[key]=value`)",
        "examples": [{"order_id": "A-1042", "customer": "c_88"}],
    },
    "Entry": _object(
        {
            "id": ID,
            "transfer_id": ID,
            "account_id": ID,
            "amount": {
                "type": "integer",
                "format": "int64",
                "not": {"const": 0},
                "description": "negative for a debit, positive for a credit",
            },
            "created_at": TIMESTAMP,
        }
    ),
    "NewUser": _object(
        {
            "email": {"type": "string", "maxLength": 254, "pattern": _EMAIL_PATTERN},
            "name": {"type": "string", "maxLength": 200, "pattern": _TEXT_PATTERN},
        }
    ),
    "NewAccount": _object(
        {
            "user_id": ID,
            "currency": NEW_CURRENCY,
            "allow_negative_balance": {
                "type": "boolean",
                "default": False,
                "description": "true makes a treasury account, which may go below zero",
            },
        },
        optional=("allow_negative_balance",),
    ),
    "NewTransfer": _object(
        {
            "from_account_id": ID,
            "to_account_id": ID,
            "amount": AMOUNT,
            "currency": {**NEW_CURRENCY, "description": "when given, both accounts must hold it"},
            "metadata": _ref("Metadata"),
        },
        optional=("currency", "metadata"),
    ),
    "DashboardTransfer": _object(
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
    "OperatorAction": _object(
        {
            "id": ID,
            "key_id": {"type": ["integer", "null"]},
            "key_label": {"type": ["string", "null"]},
            "action": {"enum": ["retry", "cancel"]},
            "transfer_ids": {"type": "array", "items": ID},
            "detail": {"type": "string"},
            "created_at": TIMESTAMP,
        }
    ),
    "TransferFilter": _object(
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
                "pattern": _TEXT_PATTERN,
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

_COUNT: Schema = {"type": "integer", "minimum": 0}
_NULLABLE_COUNT: Schema = {"type": ["integer", "null"], "minimum": 0}
_NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
SCHEMAS["TransferDetail"] = {
    "type": "object",
    "properties": {
        **SCHEMAS["DashboardTransfer"]["properties"],
        "idempotency_scope": {"type": "string"},
        "idempotency_key": {"type": "string"},
        "enqueued_at": TIMESTAMP,
        "finished_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
        "metadata": _ref("Metadata"),
        "entries": {"type": "array", "items": _ref("Entry")},
        "actions": {
            "type": "array",
            "items": _object(
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
SCHEMAS["Overview"] = _object(
    {
        "queues": {
            "oneOf": [
                _object(
                    {
                        "ready": _COUNT,
                        "delayed": _COUNT,
                        "in_flight": _COUNT,
                        "dead": _COUNT,
                    }
                ),
                {"type": "null"},
            ]
        },
        "queue_error": {"type": ["string", "null"]},
        "transfers": _object(
            {"pending": _COUNT, "settled": _COUNT, "failed": _COUNT, "dead_lettered": _COUNT}
        ),
        "transfers_exact": {
            "type": "boolean",
            "description": "false on a large ledger: settled and failed are estimates",
        },
        "oldest_pending_seconds": {"type": "number", "minimum": 0},
        "last_hour": {
            "type": "array",
            "items": _object(
                {
                    "minute": TIMESTAMP,
                    "settled": _COUNT,
                    "failed": _COUNT,
                    "p50_ms": _NULLABLE_NUMBER,
                    "p99_ms": _NULLABLE_NUMBER,
                }
            ),
        },
        "workers": {
            "type": "array",
            "items": _object(
                {
                    "holder": {"type": "string"},
                    "role": {"type": "string"},
                    "wanted": _COUNT,
                    "granted": _COUNT,
                    "connected": _COUNT,
                    "busy": _COUNT,
                    "acquired_at": TIMESTAMP,
                    "heartbeat_at": TIMESTAMP,
                }
            ),
        },
        "budget": _object(
            {
                "available": {"type": "integer"},
                "source": {"type": "string"},
                "refusal": {"type": ["string", "null"]},
                "roles": {
                    "type": "array",
                    "items": _object(
                        {
                            "role": {"type": "string"},
                            "planned": _NULLABLE_COUNT,
                            "leased": _COUNT,
                            "connected": _COUNT,
                        }
                    ),
                },
            }
        ),
    }
)


def _data(schema: Schema) -> Schema:
    return _object({"data": schema})


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


LOCATION = _header("where the new resource can be read")
RETRY_AFTER = _header("seconds to wait before retrying", {"type": "string", "pattern": "^[0-9]+$"})
CHALLENGE = _header('`Bearer realm="settle"`, with `error="invalid_token"` for a bad key')


REQUEST_ID = _header(
    "the request's id: the client's own `X-Request-Id` when it sent one of 1 to 128 characters"
    " among `A-Za-z0-9._:@/+=-`, a new one otherwise; log lines about the request carry it",
    {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
)


def ok(description: str, schema: Schema, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json(schema),
        "headers": {**headers, "X-Request-Id": REQUEST_ID},
    }


def error(description: str, *codes: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A response in the error shape whose `code` is one of `codes`."""
    body = _object(
        {
            "error": _object(
                {"code": {"enum": sorted(codes)}, "message": {"type": "string", "minLength": 1}}
            )
        }
    )
    return ok(description, body, **headers)


# Answers that several operations share.
UNAUTHENTICATED = error(
    "no API key, or one that is malformed, unknown or revoked",
    "api_key_missing",
    "api_key_invalid",
    **{"WWW-Authenticate": CHALLENGE},
)
OPERATOR_ONLY = error(
    "the API key is a user's (only an operator key may do this) or a read-only operator key's",
    "operator_only",
    "read_only_key",
)
READ_ONLY = error(
    "the API key is a read-only operator key; it may not change anything", "read_only_key"
)
UNAVAILABLE = error(
    "the database or the web process is saturated or unreachable; retry after Retry-After",
    "database_busy",
    "database_unavailable",
    "overloaded",
    **{"Retry-After": RETRY_AFTER},
)
TRANSFER_UNAVAILABLE = error(
    "the database or the web process is saturated or unreachable, or the transfer was recorded"
    " but the message broker could not queue it (broker_unavailable: it is settled once the"
    " broker is back); retry with the same Idempotency-Key after Retry-After",
    "database_busy",
    "database_unavailable",
    "overloaded",
    "broker_unavailable",
    **{"Retry-After": RETRY_AFTER},
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
OVERLOADED = error(
    "the web process has too many requests queued; retry after Retry-After",
    "overloaded",
    **{"Retry-After": RETRY_AFTER},
)
BODY_TOO_LARGE = error("the body is larger than MAX_BODY_BYTES", "body_too_large")
NOT_JSON = error("the body is not sent as application/json", "unsupported_media_type")
BAD_BODY = ("invalid_request", "invalid_json")


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": _json(_ref(name))}


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"the {what}'s id; anything that is not one answers 404",
        "schema": ID,
    }


PUBLIC: list[dict[str, list[str]]] = []  # an operation's `security` when it needs no key
#: The dashboard's JSON twin: an operator key, or the dashboard's session cookie.
OPERATOR_OR_SESSION: list[dict[str, list[str]]] = [{"apiKey": []}, {"session": []}]

DASHBOARD_READ_FORBIDDEN = error(
    "the API key is a user's; the dashboard is for operators", "operator_only"
)
DASHBOARD_ACTION_FORBIDDEN = error(
    "the API key is a user's or a read-only operator key's, or a session request came without"
    " its CSRF token in X-CSRF-Token",
    "operator_only",
    "read_only_key",
    "csrf_token_invalid",
)
_FILTER_PARAMETERS: list[dict[str, Any]] = [
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
_PAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "limit",
        "in": "query",
        "description": "items per page",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "the `next_cursor` of the previous page (opaque)",
        "schema": {"type": "string"},
    },
]


def _page_of(name: str) -> Schema:
    return _object(
        {
            "data": {"type": "array", "items": _ref(name)},
            "next_cursor": {"type": ["string", "null"]},
        }
    )


_TRANSFER_404 = error("no such transfer", "transfer_not_found")
_BAD_QUERY = error(
    "a query parameter is unknown, given twice, blank or malformed (the message names it),"
    " or cursor was not issued by this service for this list",
    "invalid_request",
    "invalid_cursor",
)


def _query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


_BAD_FILTER = error(
    "a filter value, limit or cursor is malformed, or a parameter is unknown or repeated",
    "invalid_request",
    "invalid_cursor",
)


def _action_done(flag: str) -> Schema:
    return _data(
        _object({"id": ID, flag: {"type": "boolean"}, "notice": {"type": ["string", "null"]}})
    )


DASHBOARD_PATHS: dict[str, dict[str, Any]] = {
    "/dashboard/api/overview": {
        "get": {
            "operationId": "dashboardOverview",
            "summary": "Queues, transfers by status, the last hour, processes and the budget",
            "security": OPERATOR_OR_SESSION,
            "responses": {
                "200": ok("the overview", _data(_ref("Overview"))),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers": {
        "get": {
            "operationId": "dashboardTransfers",
            "summary": "Transfers needing attention matching a filter, by ascending id",
            "security": OPERATOR_OR_SESSION,
            "parameters": [*_FILTER_PARAMETERS, *_PAGE_PARAMETERS],
            "responses": {
                "200": ok("a page of transfers", _page_of("DashboardTransfer")),
                "400": _BAD_FILTER,
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/count": {
        "get": {
            "operationId": "dashboardTransferCount",
            "summary": "How many transfers match a filter, and how many a bulk retry would send",
            "security": OPERATOR_OR_SESSION,
            "parameters": _FILTER_PARAMETERS,
            "responses": {
                "200": ok(
                    "the counts",
                    _data(_object({"matching": _COUNT, "retryable": _COUNT})),
                ),
                "400": _BAD_FILTER,
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_READ_FORBIDDEN,
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
            "security": OPERATOR_OR_SESSION,
            "requestBody": _body("TransferFilter"),
            "responses": {
                "200": ok(
                    "what was sent again",
                    _data(
                        _object(
                            {
                                "sent": _COUNT,
                                "batches": _COUNT,
                                "remaining": _COUNT,
                                "notice": {"type": ["string", "null"]},
                            }
                        )
                    ),
                ),
                "400": error("the filter is malformed", *BAD_BODY),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_ACTION_FORBIDDEN,
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
            "security": OPERATOR_OR_SESSION,
            "parameters": [_path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("the transfer", _data(_ref("TransferDetail"))),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_READ_FORBIDDEN,
                "404": _TRANSFER_404,
                "503": UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/{transfer_id}/retry": {
        "post": {
            "operationId": "dashboardRetry",
            "summary": "Send a dead-lettered transfer again (anything else: nothing happens)",
            "security": OPERATOR_OR_SESSION,
            "parameters": [_path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("whether it was sent again", _action_done("retried")),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_ACTION_FORBIDDEN,
                "404": _TRANSFER_404,
                "503": ACTION_UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/transfers/{transfer_id}/cancel": {
        "post": {
            "operationId": "dashboardCancel",
            "summary": "End a dead-lettered transfer failed (cancelled_by_operator), moving no"
            " money (anything else: nothing happens)",
            "security": OPERATOR_OR_SESSION,
            "parameters": [_path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("whether it was cancelled", _action_done("cancelled")),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_ACTION_FORBIDDEN,
                "404": _TRANSFER_404,
                "503": ACTION_UNAVAILABLE,
            },
        }
    },
    "/dashboard/api/actions": {
        "get": {
            "operationId": "dashboardActions",
            "summary": "The operator action record, newest first",
            "security": OPERATOR_OR_SESSION,
            "parameters": _PAGE_PARAMETERS,
            "responses": {
                "200": ok("a page of actions", _page_of("OperatorAction")),
                "400": error(
                    "limit is out of range, or cursor was not issued by this service",
                    "invalid_request",
                    "invalid_cursor",
                ),
                "401": UNAUTHENTICATED,
                "403": DASHBOARD_READ_FORBIDDEN,
                "503": UNAVAILABLE,
            },
        }
    },
}

PATHS: dict[str, dict[str, Any]] = {
    "/users": {
        "post": {
            "operationId": "createUser",
            "summary": "Create a user (operator keys only)",
            "requestBody": _body("NewUser"),
            "responses": {
                "201": ok("the user", _data(_ref("User")), Location=LOCATION),
                "400": error("the body is malformed", *BAD_BODY),
                "401": UNAUTHENTICATED,
                "403": OPERATOR_ONLY,
                "409": error("another user has this email", "email_taken"),
                "413": BODY_TOO_LARGE,
                "415": NOT_JSON,
                "503": UNAVAILABLE,
            },
        }
    },
    "/users/me": {
        "get": {
            "operationId": "getMe",
            "summary": "The user a user's key acts for",
            "responses": {
                "200": ok("the key's user", _data(_ref("User"))),
                "401": UNAUTHENTICATED,
                "404": error(
                    "the key is an operator key, which acts for no user", "user_not_found"
                ),
                "503": UNAVAILABLE,
            },
        }
    },
    "/users/{user_id}": {
        "get": {
            "operationId": "getUser",
            "summary": "Read a user (a user's key: only its own)",
            "parameters": [_path_id("user_id", "user")],
            "responses": {
                "200": ok("the user", _data(_ref("User"))),
                "401": UNAUTHENTICATED,
                "404": error("no such user, or not the key's user", "user_not_found"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/accounts": {
        "get": {
            "operationId": "listAccounts",
            "summary": "List the key's accounts (an operator key: every account), newest first",
            "description": "A page at a time: pass `next_cursor` back as `cursor` for the next"
            " page. Filters narrow what the key sees: a user's key filtering on another"
            " `user_id` gets an empty page.",
            "parameters": [
                *_PAGE_PARAMETERS,
                _query("user_id", "accounts of this user only", ID),
                _query(
                    "currency",
                    "accounts in this currency only",
                    {"type": "string", "pattern": "^[A-Z]{3}$"},
                ),
            ],
            "responses": {
                "200": ok("a page of accounts, newest first", _page_of("Account")),
                "400": _BAD_QUERY,
                "401": UNAUTHENTICATED,
                "503": UNAVAILABLE,
            },
        },
        "post": {
            "operationId": "createAccount",
            "summary": "Open an account with a zero balance (operator keys only)",
            "requestBody": _body("NewAccount"),
            "responses": {
                "201": ok("the account", _data(_ref("Account")), Location=LOCATION),
                "400": error("the body is malformed", *BAD_BODY),
                "401": UNAUTHENTICATED,
                "403": OPERATOR_ONLY,
                "404": error("user_id names no user", "user_not_found"),
                "413": BODY_TOO_LARGE,
                "415": NOT_JSON,
                "503": UNAVAILABLE,
            },
        },
    },
    "/accounts/{account_id}": {
        "get": {
            "operationId": "getAccount",
            "summary": "Read an account and its balance (a user's key: only its own)",
            "parameters": [_path_id("account_id", "account")],
            "responses": {
                "200": ok("the account", _data(_ref("Account"))),
                "401": UNAUTHENTICATED,
                "404": error("no such account, or not the key's user's", "account_not_found"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/accounts/{account_id}/entries": {
        "get": {
            "operationId": "listEntries",
            "summary": "List an account's ledger entries, oldest first, a page at a time",
            "parameters": [
                _path_id("account_id", "account"),
                {
                    "name": "limit",
                    "in": "query",
                    "description": "entries per page",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "the `next_cursor` of the previous page (opaque)",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": ok(
                    "a page of entries; `next_cursor` is null on the last page",
                    _object(
                        {
                            "data": {"type": "array", "items": _ref("Entry")},
                            "next_cursor": {"type": ["string", "null"]},
                        }
                    ),
                ),
                "400": error(
                    "limit is out of range, or cursor was not issued by this service",
                    "invalid_request",
                    "invalid_cursor",
                ),
                "401": UNAUTHENTICATED,
                "404": error("no such account, or not the key's user's", "account_not_found"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/transfers": {
        "get": {
            "operationId": "listTransfers",
            "summary": "List the key's transfers (a user's key: those from or to its accounts;"
            " an operator key: all), newest first, with filters",
            "description": "Newest first by `created_at` (then `id`), a page at a time: pass"
            " `next_cursor` back as `cursor` for the next page, with the same filters. Filters"
            " combine (all must hold) and narrow what the key sees; one that matches nothing"
            " answers an empty page. Unknown parameters, a parameter given twice, blank or"
            " malformed values answer 400 naming the parameter.",
            "parameters": [
                *_PAGE_PARAMETERS,
                _query(
                    "status", "transfers in this status", {"enum": ["pending", "settled", "failed"]}
                ),
                _query(
                    "account_id",
                    "transfers from or to this account (for a user's key, still only those"
                    " touching its own accounts)",
                    ID,
                ),
                _query(
                    "failure_code",
                    "failed transfers with this code",
                    {"type": "string", "pattern": "^[a-z_]{1,64}$"},
                ),
                _query(
                    "created_after",
                    "accepted strictly after this moment (RFC 3339, with an offset; send `+`"
                    " as `%2B`)",
                    TIMESTAMP,
                ),
                _query("created_before", "accepted strictly before this moment", TIMESTAMP),
                {
                    "name": "metadata",
                    "in": "query",
                    "style": "deepObject",
                    "explode": True,
                    "description": "`metadata[key]=value`: transfers whose metadata has this"
                    " key with this value (several: all of them)",
                    "schema": {
                        "type": "object",
                        "maxProperties": MAX_METADATA_KEYS,
                        "propertyNames": METADATA_KEY,
                        "additionalProperties": METADATA_VALUE,
                    },
                },
            ],
            "responses": {
                "200": ok("a page of transfers, newest first", _page_of("Transfer")),
                "400": _BAD_QUERY,
                "401": UNAUTHENTICATED,
                "503": UNAVAILABLE,
            },
        },
        "post": {
            "operationId": "submitTransfer",
            "summary": "Submit a transfer (a user's key: only out of its own accounts)",
            "description": "Answers at once with the transfer pending; workers settle it. "
            "Replaying an Idempotency-Key with the same body returns the same transfer; keys "
            "are scoped to the key holder (a user, or all operators).",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                }
            ],
            "requestBody": _body("NewTransfer"),
            "responses": {
                "202": ok("the pending transfer", _data(_ref("Transfer")), Location=LOCATION),
                "400": error(
                    "the body or the Idempotency-Key is malformed or missing",
                    *BAD_BODY,
                    "idempotency_key_missing",
                ),
                "401": UNAUTHENTICATED,
                "403": READ_ONLY,
                "413": BODY_TOO_LARGE,
                "415": NOT_JSON,
                "422": error(
                    "the transfer cannot be accepted as asked (an account that does not exist"
                    " or, for a user's key, a source account that is not its own; accounts in"
                    " different currencies; the same account twice; an Idempotency-Key used"
                    " with another body)",
                    "account_not_found",
                    "currency_mismatch",
                    "same_account",
                    "idempotency_key_reused",
                ),
                "503": TRANSFER_UNAVAILABLE,
            },
        },
    },
    "/transfers/{transfer_id}": {
        "get": {
            "operationId": "getTransfer",
            "summary": "Read a transfer (a user's key: one from or to its own accounts)",
            "parameters": [_path_id("transfer_id", "transfer")],
            "responses": {
                "200": ok("the transfer", _data(_ref("Transfer"))),
                "401": UNAUTHENTICATED,
                "404": error(
                    "no such transfer, or none of its accounts is the key's user's",
                    "transfer_not_found",
                ),
                "503": UNAVAILABLE,
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "Liveness: the process serves requests",
            "security": PUBLIC,
            "responses": {
                "200": ok("alive", _data(_object({"status": {"const": "ok"}}))),
                "503": OVERLOADED,
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "ready",
            "summary": "Readiness: Postgres (through the pool) and the message broker (Redis"
            " or RabbitMQ, reported under its name) answer",
            "security": PUBLIC,
            "responses": {
                "200": ok(
                    "ready",
                    _data(
                        {
                            **_object(
                                {
                                    "status": {"const": "ready"},
                                    "postgres": {"const": "ok"},
                                    "redis": {"const": "ok"},
                                    "rabbitmq": {"const": "ok"},
                                },
                                optional=("redis", "rabbitmq"),
                            ),
                            # Exactly one broker: the one in use.
                            "minProperties": 3,
                            "maxProperties": 3,
                        }
                    ),
                ),
                "503": error(
                    "Postgres or the broker does not answer (the message says which)",
                    "not_ready",
                    "overloaded",
                    **{"Retry-After": RETRY_AFTER},
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (operator keys only; a user's key is refused as 401)",
            "description": "The exposition text of the `settle_*` series: this host's web and"
            " worker processes added up, and the database-wide series read at scrape time. See"
            ' the README\'s "Operating Settle".',
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                    "headers": {"X-Request-Id": REQUEST_ID},
                },
                "401": error(
                    "no API key, one that is malformed, unknown or revoked, or a user's key",
                    "api_key_missing",
                    "api_key_invalid",
                    **{"WWW-Authenticate": CHALLENGE},
                ),
                "503": UNAVAILABLE,
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": PUBLIC,
            "responses": {
                "200": ok("the OpenAPI document", {"type": "object"}),
                "503": OVERLOADED,
            },
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Settle",
        "version": "1",
        "description": 'A money-transfer service. JSON in and out: `{"data": ...}` on '
        'success, `{"error": {"code", "message"}}` on failure. Amounts are integers in minor '
        "units. Every operation but /healthz, /readyz and /openapi.json needs "
        "`Authorization: Bearer <API key>`. A user's key sees only its own user, accounts, "
        "their entries and the transfers touching them, and moves money only out of its own "
        "accounts; anything else answers as if it did not exist. An operator key may do "
        "everything; a read-only operator key sees everything and is refused (403 "
        "`read_only_key`) whatever would change something. Methods not listed for a path "
        "answer 405 with `Allow`; OPTIONS is answered by the framework with `Allow`.",
    },
    "security": [{"apiKey": []}],
    "paths": {**PATHS, **DASHBOARD_PATHS},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key from `settle keys create --user ID` or "
                "`settle keys create --operator`",
            },
            "session": {
                "type": "apiKey",
                "in": "cookie",
                "name": "settle_dashboard",
                "description": "the dashboard's session (POST /dashboard/login); requests that"
                " change something also send its CSRF token as `X-CSRF-Token`",
            },
        },
    },
}
