"""Authentication: every route needs `Authorization: Bearer <API key>` unless its resource
says `public = True`; the principal found is left in `req.context.principal`."""

from __future__ import annotations

from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from shared.db.pool import connection
from shared.errors import ApiKeyInvalid, ApiKeyMissing
from shared.ledger import auth
from shared.ledger.auth import Principal, PrincipalCache
from shared.ratelimit.buckets import Limiter
from web import ratelimit


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
    the responder, so a request without a valid key reads no body and touches no data.

    A key found in `cache` costs no database work; otherwise the lookup borrows a pooled
    connection of its own, returns it before the responder runs, and a key found live is
    remembered for the cache's TTL (at most a second, the revocation contract).

    Then the key's rate limit (`limiter`, when given): one token of its bucket, one Redis
    round trip; a key over its limit is refused with 429 before the responder runs, and an
    answer within it carries the RateLimit headers (`web.ratelimit`)."""

    def __init__(
        self, pool: ConnectionPool, cache: PrincipalCache, limiter: Limiter | None = None
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._limiter = limiter

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: Any
    ) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        key = bearer_key(req.get_header("Authorization"))
        auth.check_well_formed(key)
        digest = auth.hash_key(key)
        found = self._cache.get(digest)
        if found is None:
            looked_up_at = self._cache.clock()
            with connection(self._pool) as conn:
                found = auth.authenticate(conn, key)
            self._cache.put(digest, found, looked_up_at=looked_up_at)
        req.context.principal = found
        if self._limiter is not None and found.key_id is not None:
            decision = self._limiter.check(found.key_id, found.rate, found.burst)
            if decision is not None:
                if not decision.allowed:
                    raise ratelimit.refusal(decision)
                policy, state = ratelimit.headers(decision)
                resp.set_header(*policy)
                resp.set_header(*state)


def principal(req: falcon.Request) -> Principal:
    """The principal `RequireApiKey` found for this request."""
    found = req.context.principal
    assert isinstance(found, Principal)
    return found
