"""Authentication: every route needs `Authorization: Bearer <API key>` unless its resource
says `public = True`; the principal found is left in `req.context.principal`."""

from __future__ import annotations

from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from shared.db.pool import connection
from shared.errors import ApiKeyInvalid, ApiKeyMissing
from shared.ledger import auth
from shared.ledger.auth import Principal


def bearer_key(header: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header (the scheme is case-insensitive)."""
    if header is None or not header.strip():
        raise ApiKeyMissing("send an API key as `Authorization: Bearer <key>`")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiKeyInvalid("the Authorization header must be `Bearer <key>`")
    return key.strip()


class RequireApiKey:
    """Falcon middleware. It runs after routing, so an unknown path is still a 404, and before
    the responder, so a request without a valid key reads no body and touches no data. The
    lookup borrows a pooled connection of its own and returns it before the responder runs."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: Any
    ) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        key = bearer_key(req.get_header("Authorization"))
        auth.check_well_formed(key)
        with connection(self._pool) as conn:
            req.context.principal = auth.authenticate(conn, key)


def principal(req: falcon.Request) -> Principal:
    """The principal `RequireApiKey` found for this request."""
    found = req.context.principal
    assert isinstance(found, Principal)
    return found
