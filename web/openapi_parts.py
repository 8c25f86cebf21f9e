"""Pieces of the OpenAPI document that the API's part (`web/openapi.py`) and the dashboard's
(`web/dashboard/openapi.py`) share: schema builders, value types, and the answers many
operations give."""

from __future__ import annotations

from typing import Any

from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT

Schema = dict[str, Any]

#: What Python's `str.isspace` (and so `str.strip` and the `\s` of `re`) counts as white
#: space, spelled out: the `\s` of JSON Schema patterns (ECMA-262) is a different set.
SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
#: Text the service stores: not blank, no NUL (Postgres text cannot hold one).
TEXT_PATTERN = f"^[^\\u0000]*[^\\u0000{SPACE}][^\\u0000]*$"

ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": BIGINT_MAX}
#: A currency as answered: an ISO 4217 code (accounts opened before codes were checked may
#: hold another three-letter code, and keep it).
CURRENCY: Schema = {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["EUR"]}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
AMOUNT: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_AMOUNT}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def data(schema: Schema) -> Schema:
    return obj({"data": schema})


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


RETRY_AFTER = header("seconds to wait before retrying", {"type": "string", "pattern": "^[0-9]+$"})
CHALLENGE = header('`Bearer realm="settle"`, with `error="invalid_token"` for a bad key')

RATE_LIMIT_POLICY = header(
    "the key's rate limit (IETF draft-ietf-httpapi-ratelimit-headers): a bucket of `q` requests"
    ' earned back in `w` seconds; `"default"` is RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST,'
    ' `"key"` a limit of the key\'s own',
    {"type": "string", "pattern": '^"(default|key)";q=[0-9]+;w=[0-9]+$'},
)
RATE_LIMIT = header(
    "what is left of the key's rate limit: `r` requests now, one more in `t` seconds",
    {"type": "string", "pattern": '^"(default|key)";r=[0-9]+;t=[0-9]+$'},
)
REQUEST_ID = header(
    "the request's id: the client's own `X-Request-Id` when it sent one of 1 to 128 characters"
    " among `A-Za-z0-9._:@/+=-`, a new one otherwise; log lines about the request carry it",
    {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
)


def ok(description: str, schema: Schema, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": json_content(schema),
        "headers": {**headers, "X-Request-Id": REQUEST_ID},
    }


def error(description: str, *codes: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A response in the error shape whose `code` is one of `codes`."""
    body = obj(
        {
            "error": obj(
                {"code": {"enum": sorted(codes)}, "message": {"type": "string", "minLength": 1}}
            )
        }
    )
    return ok(description, body, **headers)


# Answers that several operations share.
RATE_LIMITED = error(
    "the API key is over its rate limit (a token bucket per key, shared by every web process);"
    " nothing was done: retry after Retry-After",
    "rate_limited",
    **{"Retry-After": RETRY_AFTER, "RateLimit-Policy": RATE_LIMIT_POLICY, "RateLimit": RATE_LIMIT},
)


def rate_limited(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`paths` with the rate limit written in: every operation that takes an API key (the
    document's default security) may answer 429, and its successes carry the RateLimit
    headers (not required: they are left out when the key is not limited, or the limit could
    not be checked)."""
    optional = {
        "RateLimit-Policy": {**RATE_LIMIT_POLICY, "required": False},
        "RateLimit": {**RATE_LIMIT, "required": False},
    }
    out: dict[str, dict[str, Any]] = {}
    for path, item in paths.items():
        out[path] = {}
        for method, operation in item.items():
            if "security" in operation:
                out[path][method] = operation
                continue
            responses = {
                status: (
                    {**response, "headers": {**response.get("headers", {}), **optional}}
                    if status.startswith("2")
                    else response
                )
                for status, response in operation["responses"].items()
            }
            out[path][method] = {**operation, "responses": {**responses, "429": RATE_LIMITED}}
    return out


UNAUTHENTICATED = error(
    "no API key, or one that is malformed, unknown or revoked",
    "api_key_missing",
    "api_key_invalid",
    **{"WWW-Authenticate": CHALLENGE},
)
UNAVAILABLE = error(
    "the database or the web process is saturated or unreachable; retry after Retry-After",
    "database_busy",
    "database_unavailable",
    "overloaded",
    **{"Retry-After": RETRY_AFTER},
)
BODY_TOO_LARGE = error("the body is larger than MAX_BODY_BYTES", "body_too_large")
NOT_JSON = error("the body is not sent as application/json", "unsupported_media_type")
BAD_BODY = ("invalid_request", "invalid_json")


def body(name: str) -> dict[str, Any]:
    return {"required": True, "content": json_content(ref(name))}


def path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"the {what}'s id; anything that is not one answers 404",
        "schema": ID,
    }


PAGE_PARAMETERS: list[dict[str, Any]] = [
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


def page_of(name: str) -> Schema:
    return obj(
        {
            "data": {"type": "array", "items": ref(name)},
            "next_cursor": {"type": ["string", "null"]},
        }
    )
