"""The middle rungs of `make bench`'s read ladder, served only with BENCH_ROUTES=true.

Between `GET /healthz` (waitress, Falcon and the middleware, no key, no database) and
`GET /users/{id}` (the key, a pooled connection, the query and its row rendered) the ladder
measures `GET /bench/key` (the API key checked, nothing else) and `GET /bench/select-1`
(the key, then a pooled `SELECT 1`), so that each step's cost is a number of its own. They
answer nothing a client could use and are not part of the API: production never sets
BENCH_ROUTES.
"""

from __future__ import annotations

import falcon
from psycopg_pool import ConnectionPool

from shared.db.pool import connection


class KeyChecked:
    """`GET /bench/key`: what `RequireApiKey` costs on top of `/healthz`."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"data": {"status": "ok"}}


class SelectOne:
    """`GET /bench/select-1`: the key, then one pooled round trip to Postgres."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with connection(self._pool) as conn:
            row = conn.execute("SELECT 1").fetchone()
        resp.media = {"data": {"one": None if row is None else row[0]}}


def add_ladder(app: falcon.App, pool: ConnectionPool) -> None:
    """Route the ladder's rungs on `app`."""
    app.add_route("/bench/key", KeyChecked())
    app.add_route("/bench/select-1", SelectOne(pool))
