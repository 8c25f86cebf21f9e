"""Webhook endpoints: subscribe a URL to event types, list, read, delete, rotate the secret.

An endpoint belongs to the user of the key that made it, and receives the events of that
user's transfers; one made with an operator key belongs to no user and receives every
event. A user's key sees and changes only its user's endpoints (others' are reported as not
existing, so ids cannot be probed); an operator key sees and changes all. Read-only keys
only read. The signing secret is returned by `create_endpoint` and `rotate_secret` only
(see `shared.webhooks.signing` for why it cannot be read back).

Functions raise `InvalidRequest` (and its `InvalidWebhookUrl`), `WebhookEndpointNotFound`,
`TooManyWebhookEndpoints`, `ReadOnlyKey` or `WebhooksUnconfigured`; driver errors propagate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shared.db import Row
from shared.errors import InvalidRequest, TooManyWebhookEndpoints, WebhookEndpointNotFound
from shared.events.feed import TYPES
from shared.ledger.auth import Principal, require_writer
from shared.ledger.commands import body_fields
from shared.ledger.paging import Page, Params, encode_cursor, page_of
from shared.webhooks import signing
from shared.webhooks.addresses import Target, parse_url

#: The fields of an endpoint as clients see it (`secret` is added where it is shown).
ENDPOINT_FIELDS = (
    "id", "url", "event_types", "user_id", "created_at", "secret_rotated_at",
    "previous_secret_expires_at",
)  # fmt: skip
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, ENDPOINT_FIELDS))

#: Live endpoints one owner (a user, or the operators together) may have: each event is
#: delivered once per endpoint, so this bounds what one event costs.
MAX_ENDPOINTS = 20

#: The cursor letter of the endpoints' list.
CURSOR_KIND = "w"


@dataclass(frozen=True)
class NewEndpoint:
    """A checked request for an endpoint: its URL and the event types it receives."""

    target: Target
    event_types: tuple[str, ...]


def event_types(value: object) -> tuple[str, ...]:
    """`event_types` of a request: a non-empty list of known event types (a repeated one
    counts once). Raises `InvalidRequest` naming what is wrong."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            f"event_types must be a non-empty list of event types ({', '.join(TYPES)})"
        )
    if not all(isinstance(name, str) for name in value):
        raise InvalidRequest("event_types must hold strings only")
    unknown = sorted({name for name in value if name not in TYPES})
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        raise InvalidRequest(
            f"event_types names no event type: {shown} (the types are {', '.join(TYPES)})"
        )
    return tuple(dict.fromkeys(value))


def endpoint_request(body: object) -> NewEndpoint:
    """The endpoint a `POST /webhook-endpoints` body asks for (`url`, `event_types`). Checks
    the URL's form only; `addresses.check_host` checks where it leads. Raises
    `InvalidRequest` or `InvalidWebhookUrl`."""
    fields = body_fields(body, {"url", "event_types"})
    return NewEndpoint(parse_url(fields["url"]), event_types(fields["event_types"]))


def _render(row: Mapping[str, object], secret: str | None = None) -> Row:
    shown: Row = {name: row[name] for name in ENDPOINT_FIELDS}
    if secret is not None:
        shown["secret"] = secret
    return shown


def _owner_clause(by: Principal) -> sql.Composable:
    if by.user_id is None:
        return sql.SQL("TRUE")
    return sql.SQL("user_id = {}").format(sql.Literal(by.user_id))


def create_endpoint(
    conn: psycopg.Connection, new: NewEndpoint, *, by: Principal, secret_key: str | None
) -> Row:
    """Store a new endpoint for `by`'s user (an operator's: for every event) and return it
    with its signing secret, the only time the secret is shown. Raises `ReadOnlyKey`,
    `WebhooksUnconfigured` (no SECRET_KEY) and `TooManyWebhookEndpoints`."""
    require_writer(by)
    key = signing.signing_key(secret_key)
    salt = signing.new_salt()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # One creation at a time per owner, so that two at once cannot both pass the count.
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhook-endpoints:' || %s, 0))",
            (str(by.user_id),),
        )
        cur.execute(
            sql.SQL(
                "SELECT count(*) AS n FROM webhook_endpoints"
                " WHERE user_id IS NOT DISTINCT FROM %s AND deleted_at IS NULL"
            ),
            (by.user_id,),
        )
        counted = cur.fetchone()
        assert counted is not None
        if counted["n"] >= MAX_ENDPOINTS:
            raise TooManyWebhookEndpoints(
                f"an owner may have at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
            )
        cur.execute(
            sql.SQL(
                "INSERT INTO webhook_endpoints"
                " (user_id, url, event_types, secret_salt, secret_key_check)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING {}"
            ).format(_COLUMNS),
            (by.user_id, new.target.url, list(new.event_types), salt, signing.key_check(key)),
        )
        row = cur.fetchone()
    assert row is not None
    return _render(row, signing.derive_secret(key, row["id"], salt))


def endpoint_query(raw: Mapping[str, str | list[str]]) -> tuple[int, int]:
    """(limit, after id) of `GET /webhook-endpoints` from its query parameters (`limit`,
    `cursor`). Raises `InvalidRequest` naming the parameter at fault."""
    params = Params(raw, ("limit", "cursor"))
    cursor = params.cursor(CURSOR_KIND)
    return params.limit(), cursor[0] if cursor else 0


def list_endpoints(conn: psycopg.Connection, *, limit: int, after: int, by: Principal) -> Page:
    """`by`'s live endpoints (every one for an operator), oldest first, `limit` at a time
    after the endpoint with id `after`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {} FROM webhook_endpoints WHERE {} AND deleted_at IS NULL AND id > %s"
                " ORDER BY id LIMIT %s"
            ).format(_COLUMNS, _owner_clause(by)),
            (after, limit + 1),
        )
        rows = cur.fetchall()
    page = page_of(rows, limit, lambda last: encode_cursor(CURSOR_KIND, last["id"]))
    return Page([_render(row) for row in page.items], page.next_cursor)


def _not_found(endpoint_id: int) -> WebhookEndpointNotFound:
    return WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")


def get_endpoint(conn: psycopg.Connection, endpoint_id: int, *, by: Principal) -> Row:
    """Endpoint `endpoint_id`, without its secret. Raises `WebhookEndpointNotFound` when it
    does not exist, was deleted, or is not `by`'s."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {} FROM webhook_endpoints WHERE id = %s AND {} AND deleted_at IS NULL"
            ).format(_COLUMNS, _owner_clause(by)),
            (endpoint_id,),
        )
        row = cur.fetchone()
    if row is None:
        raise _not_found(endpoint_id)
    return _render(row)


def delete_endpoint(conn: psycopg.Connection, endpoint_id: int, *, by: Principal) -> None:
    """Delete endpoint `endpoint_id`: it receives nothing more, and its deliveries not yet
    made are cancelled (those made are kept, as its history). Raises `ReadOnlyKey` and
    `WebhookEndpointNotFound` (also for one already deleted)."""
    require_writer(by)
    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                "UPDATE webhook_endpoints SET deleted_at = now()"
                " WHERE id = %s AND {} AND deleted_at IS NULL RETURNING id"
            ).format(_owner_clause(by)),
            (endpoint_id,),
        ).fetchone()
        if row is None:
            raise _not_found(endpoint_id)
        conn.execute(
            "UPDATE webhook_deliveries SET status = 'cancelled', finished_at = now()"
            " WHERE endpoint_id = %s AND status = 'pending'",
            (endpoint_id,),
        )


def rotate_secret(
    conn: psycopg.Connection, endpoint_id: int, *, by: Principal, secret_key: str | None
) -> Row:
    """Give endpoint `endpoint_id` a new signing secret and return the endpoint with it (shown
    this once). The secret it replaces stays valid for `signing.ROTATION_OVERLAP` (deliveries
    are signed with both meanwhile); one replaced before, still in its overlap, stops being
    used. When SECRET_KEY changed since the current secret was made, that secret cannot be
    derived any more and the new one is used alone at once. Raises `ReadOnlyKey`,
    `WebhooksUnconfigured` and `WebhookEndpointNotFound`."""
    require_writer(by)
    key = signing.signing_key(secret_key)
    salt = signing.new_salt()
    check = signing.key_check(key)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "UPDATE webhook_endpoints e SET"
                " previous_secret_salt = CASE WHEN old.secret_key_check = %(check)s"
                "   THEN old.secret_salt END,"
                " previous_secret_expires_at = CASE WHEN old.secret_key_check = %(check)s"
                "   THEN now() + %(overlap)s END,"
                " secret_salt = %(salt)s, secret_key_check = %(check)s,"
                " secret_rotated_at = now()"
                " FROM (SELECT id, secret_salt, secret_key_check FROM webhook_endpoints"
                "       WHERE id = %(id)s AND {owner} AND deleted_at IS NULL FOR UPDATE) old"
                " WHERE e.id = old.id RETURNING {columns}"
            ).format(
                owner=_owner_clause(by),
                columns=sql.SQL(", ").join(sql.Identifier("e", name) for name in ENDPOINT_FIELDS),
            ),
            {
                "id": endpoint_id,
                "check": check,
                "salt": salt,
                "overlap": signing.ROTATION_OVERLAP,
            },
        )
        row = cur.fetchone()
    if row is None:
        raise _not_found(endpoint_id)
    return _render(row, signing.derive_secret(key, endpoint_id, salt))
