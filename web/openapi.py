"""The OpenAPI 3.1 document of the HTTP API, written as data and served at GET /openapi.json.

The API's paths and schemas are here, the dashboard JSON twin's beside the dashboard
(`web/dashboard/openapi.py`), and the pieces both use in `web/openapi_parts.py`; `DOCUMENT`
puts them together. Tests keep it true (tests/integration/test_openapi.py): the app has
exactly the routes and methods written here, every status and error code the app can answer
is listed under each operation, every response the test suite provokes is one written here,
and schemathesis fuzzes the app against it. Request schemas say exactly what
`shared/ledger/commands.py` accepts, so that what the document calls valid is accepted and
what it calls invalid is refused.
"""

from __future__ import annotations

from typing import Any

from shared.events.feed import MAX_WAIT_SECONDS, TYPES
from shared.ledger.commands import (
    MAX_BATCH_ITEMS,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
)
from shared.ledger.currencies import EXPONENTS, PUBLISHED
from web import openapi_webhooks as webhooks
from web.dashboard import openapi as dashboard
from web.openapi_parts import (
    AMOUNT,
    BAD_BODY,
    BODY_TOO_LARGE,
    CHALLENGE,
    CURRENCY,
    ID,
    NOT_JSON,
    PAGE_PARAMETERS,
    REQUEST_ID,
    RETRY_AFTER,
    SPACE,
    TEXT_PATTERN,
    TIMESTAMP,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Schema,
    body,
    data,
    error,
    header,
    json_content,
    obj,
    ok,
    page_of,
    path_id,
    rate_limited,
    ref,
)

#: `shared.ledger.commands._EMAIL` after surrounding white space is stripped.
EMAIL_PATTERN = (
    f"^[{SPACE}]*[^@\\u0000{SPACE}]+@[^@\\u0000{SPACE}]+\\.[^@\\u0000{SPACE}]+[{SPACE}]*$"
)

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
#: The error codes of one refused item of a batch.
BATCH_ITEM_CODES = (
    "invalid_request",
    "idempotency_key_missing",
    "account_not_found",
    "currency_mismatch",
    "same_account",
    "idempotency_key_reused",
    "not_attempted",
)
#: A currency as asked for: one of the ISO 4217 codes Settle accepts.
NEW_CURRENCY: Schema = {"$ref": "#/components/schemas/Currency"}

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
    "User": obj(
        {
            "id": ID,
            "email": {"type": "string"},
            "name": {"type": "string"},
            "created_at": TIMESTAMP,
        }
    ),
    "Account": obj(
        {
            "id": ID,
            "user_id": ID,
            "currency": CURRENCY,
            "balance": {"type": "integer", "format": "int64"},
            "allow_negative_balance": {"type": "boolean"},
            "created_at": TIMESTAMP,
        }
    ),
    "Transfer": obj(
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
                    "linked_transfer_failed",
                ],
                "description": "why it failed: `insufficient_funds`, `balance_limit_exceeded`"
                " (a balance would leave the int64 range), `cancelled_by_operator`, or"
                " `linked_transfer_failed`: a transfer of the same atomic batch failed (that"
                " one carries its own code), so every transfer of the batch failed with it",
            },
            "attempts": {"type": "integer", "minimum": 0},
            "created_at": TIMESTAMP,
            "settled_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "dead_lettered_at": {
                "oneOf": [TIMESTAMP, {"type": "null"}],
                "description": "when its retries ran out (it waits in the dead-letter queue"
                " for an operator); null otherwise",
            },
            "metadata": ref("Metadata"),
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
    "Entry": obj(
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
    "Event": {
        **obj(
            {
                "id": {
                    **ID,
                    "description": "increasing: pass the last one seen as `after` to read on",
                },
                "type": {"enum": list(TYPES)},
                "created_at": TIMESTAMP,
                "data": {
                    **ref("Transfer"),
                    "description": "the transfer as this change left it",
                },
            }
        ),
        "description": "a change of a transfer's state, written in the same transaction as"
        " the change: `transfer.accepted` (POST /transfers), `transfer.settled`,"
        " `transfer.failed` (`data.failure_code` says why), `transfer.cancelled` (failed as"
        " `cancelled_by_operator`), `transfer.dead_lettered` (its retries ran out) and"
        " `transfer.released` (an operator sent it again)",
    },
    "NewUser": obj(
        {
            "email": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN},
            "name": {"type": "string", "maxLength": 200, "pattern": TEXT_PATTERN},
        }
    ),
    "NewAccount": obj(
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
    "NewTransfer": obj(
        {
            "from_account_id": ID,
            "to_account_id": ID,
            "amount": AMOUNT,
            "currency": {**NEW_CURRENCY, "description": "when given, both accounts must hold it"},
            "metadata": ref("Metadata"),
        },
        optional=("currency", "metadata"),
    ),
    "BatchTransfer": {
        **obj(
            {
                "from_account_id": ID,
                "to_account_id": ID,
                "amount": AMOUNT,
                "currency": {
                    **NEW_CURRENCY,
                    "description": "when given, both accounts must hold it",
                },
                "metadata": ref("Metadata"),
                "idempotency_key": {
                    "type": "string",
                    "pattern": "^[!-~]{1,255}$",
                    "description": "this item's own key, scoped like the Idempotency-Key"
                    " header of POST /transfers: the same key with the same transfer is a"
                    " replay (answered the transfer recorded then), with another transfer"
                    " it is refused (`idempotency_key_reused`)",
                },
            },
            optional=("currency", "metadata"),
        ),
        "description": "one transfer of a batch: a NewTransfer with its own idempotency key",
    },
    "BatchItemResult": {
        "oneOf": [
            obj({"status": {"const": 202}, "data": ref("Transfer")}),
            obj(
                {
                    "status": {"enum": [400, 422, 424]},
                    "error": obj(
                        {
                            "code": {"enum": sorted(BATCH_ITEM_CODES)},
                            "message": {"type": "string", "minLength": 1},
                        }
                    ),
                }
            ),
        ],
        "description": "the result of one item: 202 with the transfer (new, or the one its"
        " idempotency key recorded before), or the status and error the item would get as a"
        " POST /transfers of its own; nothing of a refused item is recorded. In an atomic"
        " batch refused whole, the items refused for another item's sake are 424"
        " `not_attempted`",
    },
}

LOCATION = header("where the new resource can be read")
OPERATOR_ONLY = error(
    "the API key is a user's (only an operator key may do this) or a read-only operator key's",
    "operator_only",
    "read_only_key",
)
READ_ONLY = error(
    "the API key is a read-only operator key; it may not change anything", "read_only_key"
)
TRANSFER_UNAVAILABLE = error(
    "the database or the web process is saturated or unreachable, or settlement is behind"
    " (overloaded: the transfer waiting longest was accepted more than TRANSFER_BACKLOG_MAX_MS"
    " ago; nothing was recorded), or the transfer was recorded but the message broker could"
    " not queue it (broker_unavailable: it is settled once the broker is back); retry with"
    " the same Idempotency-Key after Retry-After",
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

PUBLIC: list[dict[str, list[str]]] = []  # an operation's `security` when it needs no key

BAD_QUERY = error(
    "a query parameter is unknown, given twice, blank or malformed (the message names it),"
    " or cursor was not issued by this service for this list",
    "invalid_request",
    "invalid_cursor",
)


def query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


PATHS: dict[str, dict[str, Any]] = {
    "/users": {
        "post": {
            "operationId": "createUser",
            "summary": "Create a user (operator keys only)",
            "requestBody": body("NewUser"),
            "responses": {
                "201": ok("the user", data(ref("User")), Location=LOCATION),
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
                "200": ok("the key's user", data(ref("User"))),
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
            "parameters": [path_id("user_id", "user")],
            "responses": {
                "200": ok("the user", data(ref("User"))),
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
                *PAGE_PARAMETERS,
                query("user_id", "accounts of this user only", ID),
                query(
                    "currency",
                    "accounts in this currency only",
                    {"type": "string", "pattern": "^[A-Z]{3}$"},
                ),
            ],
            "responses": {
                "200": ok("a page of accounts, newest first", page_of("Account")),
                "400": BAD_QUERY,
                "401": UNAUTHENTICATED,
                "503": UNAVAILABLE,
            },
        },
        "post": {
            "operationId": "createAccount",
            "summary": "Open an account with a zero balance (operator keys only)",
            "requestBody": body("NewAccount"),
            "responses": {
                "201": ok("the account", data(ref("Account")), Location=LOCATION),
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
            "parameters": [path_id("account_id", "account")],
            "responses": {
                "200": ok("the account", data(ref("Account"))),
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
                path_id("account_id", "account"),
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
                    obj(
                        {
                            "data": {"type": "array", "items": ref("Entry")},
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
                *PAGE_PARAMETERS,
                query(
                    "status", "transfers in this status", {"enum": ["pending", "settled", "failed"]}
                ),
                query(
                    "account_id",
                    "transfers from or to this account (for a user's key, still only those"
                    " touching its own accounts)",
                    ID,
                ),
                query(
                    "failure_code",
                    "failed transfers with this code",
                    {"type": "string", "pattern": "^[a-z_]{1,64}$"},
                ),
                query(
                    "created_after",
                    "accepted strictly after this moment (RFC 3339, with an offset; send `+`"
                    " as `%2B`)",
                    TIMESTAMP,
                ),
                query("created_before", "accepted strictly before this moment", TIMESTAMP),
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
                "200": ok("a page of transfers, newest first", page_of("Transfer")),
                "400": BAD_QUERY,
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
            "requestBody": body("NewTransfer"),
            "responses": {
                "202": ok("the pending transfer", data(ref("Transfer")), Location=LOCATION),
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
    "/transfers/batch": {
        "post": {
            "operationId": "submitTransferBatch",
            "summary": "Submit up to 1,000 transfers in one request, each answered on its own",
            "description": "Each item is a transfer with its own `idempotency_key`; the answer"
            " lists one result per item, in request order: 202 with the pending transfer, or"
            " the 4xx status and error the item would get as a POST /transfers of its own."
            " Items are independent: a refused item records nothing and refuses nothing"
            " else. Retrying the whole batch answers the same results and records nothing"
            " twice. A body that is not a batch at all (not JSON, not an object, `transfers`"
            " missing, empty or longer than 1,000, over MAX_BATCH_BODY_BYTES) is refused"
            " whole. With `atomic: true` the batch is all or nothing, at intake and at"
            " settlement. The batch counts as one request for rate limits.",
            "requestBody": {
                "required": True,
                "content": json_content(
                    obj(
                        {
                            "transfers": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_BATCH_ITEMS,
                                # An item that is not a BatchTransfer is answered by its own
                                # 4xx result, not by refusing the batch.
                                "items": {
                                    "anyOf": [
                                        ref("BatchTransfer"),
                                        {"description": "anything else: refused alone"},
                                    ]
                                },
                            },
                            "atomic": {
                                "type": "boolean",
                                "default": False,
                                "description": "true: all or nothing. Either every transfer"
                                " is accepted and they are settled together, in one"
                                " transaction, or failed together (the one that could not be"
                                " settled with its own failure_code, the others"
                                " `linked_transfer_failed`); or none is recorded and the"
                                " answer is 422 `batch_refused`",
                            },
                        },
                        optional=("atomic",),
                    )
                ),
            },
            "responses": {
                "200": ok(
                    "one result per item, in request order",
                    data({"type": "array", "items": ref("BatchItemResult")}),
                ),
                "400": error(
                    "the body is not a batch: not JSON (invalid_json), not an object with a"
                    " non-empty `transfers` array and nothing else (invalid_batch), or more"
                    f" than {MAX_BATCH_ITEMS} transfers (batch_too_large)",
                    *BAD_BODY,
                    "invalid_batch",
                    "batch_too_large",
                ),
                "401": UNAUTHENTICATED,
                "403": READ_ONLY,
                "422": ok(
                    "an atomic batch refused whole: nothing was recorded; `data` has one"
                    " result per item, the refused ones with their errors and the others 424"
                    " `not_attempted`",
                    obj(
                        {
                            "error": obj(
                                {
                                    "code": {"enum": ["batch_refused"]},
                                    "message": {"type": "string", "minLength": 1},
                                }
                            ),
                            "data": {"type": "array", "items": ref("BatchItemResult")},
                        }
                    ),
                ),
                "413": error("the body is larger than MAX_BATCH_BODY_BYTES", "body_too_large"),
                "415": NOT_JSON,
                "503": error(
                    "the database or the web process is saturated or unreachable, or"
                    " settlement is behind (overloaded: the transfer waiting longest was"
                    " accepted more than TRANSFER_BACKLOG_MAX_MS ago; nothing was recorded),"
                    " or the batch's transfers were recorded but the message broker could not"
                    " queue"
                    " them (broker_unavailable: they are settled once the broker is back);"
                    " retry the same batch after Retry-After",
                    "database_busy",
                    "database_unavailable",
                    "overloaded",
                    "broker_unavailable",
                    **{"Retry-After": RETRY_AFTER},
                ),
            },
        },
    },
    "/transfers/{transfer_id}": {
        "get": {
            "operationId": "getTransfer",
            "summary": "Read a transfer (a user's key: one from or to its own accounts)",
            "description": "With `Prefer: wait=N` (RFC 7240), a pending transfer is answered"
            " once it is decided (settled, failed, or dead-lettered) or after N seconds"
            f" (at most {MAX_WAIT_SECONDS}), whichever comes first, with `Preference-Applied:"
            " wait=N`. Without `Preference-Applied` the wait was not made (the process had no"
            " room for another waiting request, or is stopping): the transfer is answered as"
            " it is.",
            "parameters": [
                path_id("transfer_id", "transfer"),
                {
                    "name": "Prefer",
                    "in": "header",
                    "required": False,
                    "description": f"`wait=N`: wait up to N seconds (at most {MAX_WAIT_SECONDS})"
                    " for the transfer to be decided; other preferences, and a `wait` that does"
                    " not parse, are ignored",
                    "schema": {"type": "string", "examples": ["wait=10"]},
                },
            ],
            "responses": {
                "200": ok(
                    "the transfer",
                    data(ref("Transfer")),
                    **{
                        "Preference-Applied": {
                            "description": "`wait=N` when the `Prefer: wait=N` asked for was"
                            " honoured",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
                        },
                        "Vary": header("`Prefer`: the answer depends on it"),
                    },
                ),
                "401": UNAUTHENTICATED,
                "404": error(
                    "no such transfer, or none of its accounts is the key's user's",
                    "transfer_not_found",
                ),
                "503": UNAVAILABLE,
            },
        }
    },
    "/events": {
        "get": {
            "operationId": "listEvents",
            "summary": "Read the key's transfer events after an id, in order (a user's key:"
            " those of transfers from or to its accounts; an operator key: all); with `wait`,"
            " wait for the next",
            "description": "Every change of a transfer's state is an event, written in the"
            " same transaction as the change, with an increasing id. Events are answered in id"
            " order, and only once no event with a smaller id can appear any more, so a client"
            " that reads on from the last id it saw (or from `next_after`) misses none and"
            " sees none twice: after being down, it catches up exactly. Without `after`, the"
            " events start from the oldest kept. Events are kept for EVENT_RETENTION_DAYS"
            " (30 by default); an `after` older than that answers 410 `cursor_expired`."
            " With `wait=N`, an empty answer is held until an event for the key exists or N"
            " seconds have passed; when the process has no room for another waiting request"
            " (or is stopping) it answers at once, with `Retry-After`.",
            "parameters": [
                query(
                    "after",
                    "the id of the last event seen (0: from the first); events after it are"
                    " answered",
                    {**ID, "minimum": 0},
                ),
                query(
                    "types",
                    "only events of these types, comma-separated",
                    {
                        "type": "string",
                        "pattern": "^(?:{0})(?:,(?:{0}))*$".format(
                            "|".join(t.replace(".", "\\.") for t in TYPES)
                        ),
                        "examples": ["transfer.settled,transfer.failed"],
                    },
                ),
                query(
                    "limit",
                    "events per answer",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                ),
                query(
                    "wait",
                    "seconds to wait for an event when there is none yet (a long-poll)",
                    {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS, "default": 0},
                ),
            ],
            "responses": {
                "200": ok(
                    "the events after `after`, oldest first (empty: none yet)",
                    obj(
                        {
                            "data": {"type": "array", "items": ref("Event")},
                            "next_after": {
                                "type": "integer",
                                "format": "int64",
                                "minimum": 0,
                                "description": "the `after` to read on with: every event up"
                                " to it has been answered or is not for this key or filter",
                            },
                            "has_more": {
                                "type": "boolean",
                                "description": "more events are there now (ask again"
                                " without waiting)",
                            },
                        }
                    ),
                    **{
                        "Retry-After": {
                            "description": "seconds to pause before asking again: the wait"
                            " asked for could not be made",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        }
                    },
                ),
                "400": error(
                    "a query parameter is unknown, given twice, blank or malformed (the message"
                    " names it)",
                    "invalid_request",
                ),
                "401": UNAUTHENTICATED,
                "410": error(
                    "events after `after` were deleted by retention: read the current state"
                    " (GET /transfers), then continue from the id the message gives",
                    "cursor_expired",
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
                "200": ok("alive", data(obj({"status": {"const": "ok"}}))),
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
                    data(
                        {
                            **obj(
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
            " docs/operations.md in the repository.",
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
# The webhooks' paths and schemas are the API's, written in a module of their own.
PATHS.update(webhooks.PATHS)
SCHEMAS.update(webhooks.SCHEMAS)

#: Every operation taking an API key may answer 429 and carries the RateLimit headers.
PATHS = rate_limited(PATHS)

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
        "answer 405 with `Allow`; OPTIONS is answered by the framework with `Allow`. "
        "Each API key has a rate limit (a token bucket): over it, requests answer 429 "
        "`rate_limited` with `Retry-After`, and answers carry the `RateLimit-Policy` and "
        "`RateLimit` headers of the IETF httpapi draft.",
    },
    "security": [{"apiKey": []}],
    "paths": {**PATHS, **dashboard.PATHS},
    "webhooks": webhooks.WEBHOOKS,
    "components": {
        "schemas": {**SCHEMAS, **dashboard.SCHEMAS},
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key from `settle keys create --user ID` or "
                "`settle keys create --operator`",
            },
            **dashboard.SECURITY_SCHEMES,
        },
    },
}
