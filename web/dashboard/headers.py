"""The headers every answer under /dashboard carries, set in one place (a Falcon middleware)
so that error pages, redirects and refusals carry them too.

The pages hold no script, no inline style and no event handler, and load only the stylesheet
the app serves, so the Content-Security-Policy can forbid everything else: a value that
slipped past escaping still could not run. Pages may not be framed (clickjacking on the
action buttons), types are not sniffed, no Referer leaks a filter or a transfer id, and
nothing but the stylesheet is kept in a cache (pages and the JSON twin show balances, errors
and CSRF tokens).
"""

from __future__ import annotations

from typing import Any

import falcon

PREFIX = "/dashboard"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ProtectiveHeaders:
    """Adds `HEADERS` to every answer under /dashboard, and `Cache-Control: no-store` to
    those that set no caching of their own (only the stylesheet does)."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        if not (req.path == PREFIX or req.path.startswith(PREFIX + "/")):
            return
        for name, value in HEADERS.items():
            resp.set_header(name, value)
        if resp.get_header("Cache-Control") is None:
            resp.cache_control = ["no-store"]
