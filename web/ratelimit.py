"""The rate limit over HTTP: the headers of a decision (the IETF httpapi draft's
`RateLimit-Policy` and `RateLimit`, in their structured-field form, draft-ietf-httpapi-
ratelimit-headers-10), the refusal of a key over its limit, and the check the load shedder
makes before it sheds (`OverLimit`), so that a key over its limit hears 429 even when the
process is overloaded.

`RateLimit-Policy: "default";q=200;w=2` says the bucket holds q requests and earns them back
in w seconds (the rate is q/w, rounded down for the client: a client pacing itself so is
never limited); `RateLimit: "default";r=57;t=1` says r requests are left now and t seconds
until one more is. The policy is named "key" when the key has a limit
of its own.
"""

from __future__ import annotations

from typing import Any

from shared.errors import RateLimited
from shared.ledger import auth
from shared.ledger.auth import PrincipalCache
from shared.ratelimit.buckets import Decision, Limiter

POLICY_HEADER = "RateLimit-Policy"
STATE_HEADER = "RateLimit"


def headers(decision: Decision) -> list[tuple[str, str]]:
    """The `RateLimit-Policy` and `RateLimit` headers of `decision`."""
    limit = decision.limit
    return [
        (POLICY_HEADER, f'"{limit.name}";q={limit.burst};w={limit.window}'),
        (STATE_HEADER, f'"{limit.name}";r={decision.remaining};t={decision.reset}'),
    ]


def refusal(decision: Decision) -> RateLimited:
    """The error answering a request that `decision` refused."""
    limit = decision.limit
    return RateLimited(
        f"this API key is over its rate limit ({limit.burst} requests at once, {limit.rate:g}"
        f" more per second); retry in {decision.retry_after} s",
        decision,
    )


class OverLimit:
    """For the load shedder, which answers before routing and without the database: the
    refusal of a request whose key this process has in `cache` and whose bucket is empty;
    None for any other request (no key, a key not in the cache, one within its limit, a path
    that takes no key). A
    request it lets through has taken its token: it is one request of the key's, shed or
    not."""

    def __init__(self, cache: PrincipalCache, limiter: Limiter) -> None:
        self._cache = cache
        self._limiter = limiter

    #: Paths that take no API key (the probes, the document, the dashboard's session-based
    #: pages): shed as they are, whatever key they carry.
    KEYLESS = ("/healthz", "/readyz", "/openapi.json", "/dashboard")

    def __call__(self, environ: dict[str, Any]) -> RateLimited | None:
        if environ.get("PATH_INFO", "").startswith(self.KEYLESS):
            return None
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not auth.well_formed(key):
            return None
        found = self._cache.get(auth.hash_key(key))
        if found is None or found.key_id is None:
            return None
        decision = self._limiter.check(found.key_id, found.rate, found.burst)
        if decision is None or decision.allowed:
            return None
        return refusal(decision)
