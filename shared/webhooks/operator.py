"""What operators see of webhook deliveries and do to them, for the dashboard's webhooks pages
and `settle webhooks`: every live endpoint with its failing deliveries counted (failing ones
first), an endpoint's deliveries, one delivery with each of its attempts, and retrying a
failed delivery or all of an endpoint's.

Retrying is what migration 0013 says of a failed delivery: it is set pending again, due now
(`next_attempt_at`), with a fresh window of retries (`retry_until`) and no message known to
carry it (`enqueued_at` NULL), so the dispatcher sends it a message on its next round. The
broker is not needed to retry: Postgres is the record, and the dispatcher does the sending.
Only `failed` deliveries of live endpoints are retried (a pending one is being retried
already, a delivered one arrived, a cancelled one's endpoint was deleted); every retry is
recorded in `operator_actions` in its own transaction. Functions raise
`WebhookEndpointNotFound`, `WebhookDeliveryNotFound` and `InvalidRequest` as said, and driver
errors.
"""

from __future__ import annotations

import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shared.db import Row
from shared.errors import InvalidRequest, WebhookDeliveryNotFound, WebhookEndpointNotFound
from shared.ledger import operator_actions
from shared.ledger.operator_actions import Acting
from shared.ledger.paging import Page, encode_cursor, page_of

#: A delivery's statuses (migration 0013), as `deliveries` filters on them.
STATUSES = ("pending", "delivered", "failed", "cancelled")
#: Deliveries set pending again per transaction by `retry_failed` (each batch recorded).
BATCH = operator_actions.BATCH
#: The cursor letter of an endpoint's deliveries.
CURSOR_KIND = "d"

#: Every live endpoint, failing first: failed deliveries (given up), then deliveries being
#: retried (pending with an attempt made), then the most recently attempted. The counts read
#: only the unfinished deliveries (index webhook_deliveries_unfinished); the last attempt is
#: that of the newest delivery attempted, and the last error that of the newest unfinished
#: delivery attempted (what is wrong now, rather than what went wrong once).
_ENDPOINTS = """
WITH unfinished AS (
    SELECT endpoint_id,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying,
           count(*) FILTER (WHERE status = 'pending') AS pending
      FROM webhook_deliveries WHERE status IN ('pending', 'failed') GROUP BY endpoint_id)
SELECT e.id, e.url, e.user_id, e.event_types, e.created_at,
       coalesce(u.failed, 0) AS failed, coalesce(u.retrying, 0) AS retrying,
       coalesce(u.pending, 0) AS pending,
       last.attempted_at AS last_attempt_at, last.status_code AS last_attempt_status_code,
       trouble.last_status_code, trouble.last_error
  FROM webhook_endpoints e
  LEFT JOIN unfinished u ON u.endpoint_id = e.id
  LEFT JOIN LATERAL (
      SELECT a.attempted_at, a.status_code FROM webhook_deliveries d
        JOIN LATERAL (SELECT attempted_at, status_code FROM webhook_attempts
                       WHERE delivery_id = d.id ORDER BY id DESC LIMIT 1) a ON true
       WHERE d.endpoint_id = e.id AND d.attempts > 0 ORDER BY d.id DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (
      SELECT d.last_status_code, d.last_error FROM webhook_deliveries d
       WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'failed') AND d.attempts > 0
       ORDER BY d.id DESC LIMIT 1) trouble ON true
 WHERE e.deleted_at IS NULL
 ORDER BY coalesce(u.failed, 0) + coalesce(u.retrying, 0) > 0 DESC, coalesce(u.failed, 0) DESC,
          coalesce(u.retrying, 0) DESC, last.attempted_at DESC NULLS LAST, e.id
 LIMIT %s
"""

#: The fields of a delivery in a list (its body and attempts are in `delivery` only).
DELIVERY_FIELDS = (
    "id", "endpoint_id", "event_id", "event_type", "status", "attempts", "next_attempt_at",
    "retry_until", "last_status_code", "last_error", "created_at", "finished_at",
)  # fmt: skip
_DELIVERY_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, DELIVERY_FIELDS))

#: Sets failed deliveries of live endpoints pending again (the locked ids are `%(ids)s`).
_RETRY = """
UPDATE webhook_deliveries d
   SET status = 'pending', next_attempt_at = now(), retry_until = now() + %(window)s,
       enqueued_at = NULL, finished_at = NULL
  FROM webhook_endpoints e
 WHERE d.id = ANY(%(ids)s) AND e.id = d.endpoint_id AND e.deleted_at IS NULL
   AND d.status = 'failed'
RETURNING d.id
"""


def retry_window(retry_hours: float) -> datetime.timedelta:
    """The window of retries a retried delivery gets: WEBHOOK_RETRY_HOURS, as a new one
    gets from the dispatcher."""
    return datetime.timedelta(hours=retry_hours)


def endpoints(conn: psycopg.Connection, *, limit: int = 100) -> tuple[list[Row], int]:
    """Up to `limit` live endpoints, failing first (see `_ENDPOINTS`), and how many live
    endpoints there are: id, url, user_id, event_types, created_at, failed, retrying,
    pending, last_attempt_at, last_attempt_status_code, last_status_code, last_error."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_ENDPOINTS, (limit,))
        rows = cur.fetchall()
        cur.execute("SELECT count(*) AS n FROM webhook_endpoints WHERE deleted_at IS NULL")
        counted = cur.fetchone()
    assert counted is not None
    return rows, int(counted["n"])


def endpoint(conn: psycopg.Connection, endpoint_id: int) -> Row:
    """One endpoint, deleted or not, with its deliveries counted by status: id, url, user_id,
    event_types, created_at, deleted_at, counts (status -> number). Raises
    `WebhookEndpointNotFound`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, url, user_id, event_types, created_at, deleted_at"
            " FROM webhook_endpoints WHERE id = %s",
            (endpoint_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
        cur.execute(
            "SELECT status, count(*) AS n FROM webhook_deliveries WHERE endpoint_id = %s"
            " GROUP BY status",
            (endpoint_id,),
        )
        counted = {r["status"]: int(r["n"]) for r in cur.fetchall()}
    return {**row, "counts": {status: counted.get(status, 0) for status in STATUSES}}


def status_filter(raw: str | None) -> str | None:
    """The `status` a list of deliveries is filtered on (None: every status). Raises
    `InvalidRequest` for one that is not a delivery's status."""
    if raw is None or raw == "":
        return None
    if raw not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    return raw


def deliveries(
    conn: psycopg.Connection,
    endpoint_id: int,
    *,
    status: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> Page:
    """Endpoint `endpoint_id`'s deliveries (only those of `status`, when given), newest
    first, `limit` at a time below delivery id `before`; the page's cursor names its last
    delivery (`CURSOR_KIND`). Raises `WebhookEndpointNotFound` for an unknown endpoint."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT 1 FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
        if cur.fetchone() is None:
            raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
        cur.execute(
            sql.SQL(
                "SELECT {} FROM webhook_deliveries"
                " WHERE endpoint_id = %s AND (%s::text IS NULL OR status = %s) AND id < %s"
                " ORDER BY id DESC LIMIT %s"
            ).format(_DELIVERY_COLUMNS),
            (endpoint_id, status, status, before or 2**63 - 1, limit + 1),
        )
        rows = cur.fetchall()
    return page_of(rows, limit, lambda last: encode_cursor(CURSOR_KIND, last["id"]))


def delivery(conn: psycopg.Connection, delivery_id: int, *, endpoint_id: int | None = None) -> Row:
    """One delivery with its body and every attempt, oldest first (`attempts_made`: id,
    attempted_at, status_code, latency_ms, error). Raises `WebhookDeliveryNotFound` when it
    does not exist or is not `endpoint_id`'s (when given)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {}, body FROM webhook_deliveries"
                " WHERE id = %s AND (%s::bigint IS NULL OR endpoint_id = %s)"
            ).format(_DELIVERY_COLUMNS),
            (delivery_id, endpoint_id, endpoint_id),
        )
        row = cur.fetchone()
        if row is None:
            raise _delivery_not_found(delivery_id, endpoint_id)
        cur.execute(
            "SELECT id, attempted_at, status_code, latency_ms, error FROM webhook_attempts"
            " WHERE delivery_id = %s ORDER BY id",
            (delivery_id,),
        )
        return {**row, "attempts_made": cur.fetchall()}


def _delivery_not_found(delivery_id: int, endpoint_id: int | None) -> WebhookDeliveryNotFound:
    of = "" if endpoint_id is None else f" of webhook endpoint {endpoint_id}"
    return WebhookDeliveryNotFound(f"webhook delivery {delivery_id}{of} does not exist")


def _record(
    conn: psycopg.Connection, by: Acting, endpoint_id: int, ids: list[int], detail: str
) -> None:
    operator_actions.record(
        conn,
        by,
        "retry_webhook",
        [],
        detail,
        webhook_endpoint_id=endpoint_id,
        webhook_delivery_ids=ids,
    )


def retry_deliveries(
    conn: psycopg.Connection,
    delivery_ids: list[int],
    *,
    by: Acting,
    window: datetime.timedelta,
    endpoint_id: int | None = None,
) -> list[int]:
    """Set those of `delivery_ids` that are failed (and whose endpoint is live) pending again
    with `window` of retries, recording it; return the ids retried, ascending. One
    transaction: every id is checked first, so an unknown one (or, with `endpoint_id`, one
    of another endpoint) raises `WebhookDeliveryNotFound` and nothing changes."""
    wanted = sorted(set(delivery_ids))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT id, endpoint_id FROM webhook_deliveries WHERE id = ANY(%s)"
            " AND (%s::bigint IS NULL OR endpoint_id = %s) ORDER BY id FOR UPDATE",
            (wanted, endpoint_id, endpoint_id),
        )
        found = {int(r[0]): int(r[1]) for r in cur.fetchall()}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise _delivery_not_found(missing[0], endpoint_id)
        cur.execute(_RETRY, {"ids": wanted, "window": window})
        retried = sorted(int(r[0]) for r in cur.fetchall())
        by_endpoint: dict[int, list[int]] = {}
        for did in retried:
            by_endpoint.setdefault(found[did], []).append(did)
        for eid, ids in sorted(by_endpoint.items()):
            _record(conn, by, eid, ids, f"retried {len(ids)} failed webhook delivery(ies)")
    return retried


def retry_failed(
    conn: psycopg.Connection,
    endpoint_id: int,
    *,
    by: Acting,
    window: datetime.timedelta,
    batch: int = BATCH,
) -> int:
    """Set every failed delivery of endpoint `endpoint_id` pending again with `window` of
    retries, `batch` per transaction (each recorded); return how many. Raises
    `WebhookEndpointNotFound` for an unknown or deleted endpoint (a deleted one's
    deliveries would only be cancelled)."""
    row = conn.execute(
        "SELECT deleted_at IS NOT NULL FROM webhook_endpoints WHERE id = %s", (endpoint_id,)
    ).fetchone()
    if row is None or row[0]:
        gone = "does not exist" if row is None else "was deleted; its deliveries stay as they are"
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} {gone}")
    after, total = 0, 0
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT id FROM webhook_deliveries WHERE endpoint_id = %s AND status = 'failed'"
                " AND id > %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (endpoint_id, after, batch),
            )
            ids = [int(r[0]) for r in cur.fetchall()]
            if not ids:
                return total
            cur.execute(_RETRY, {"ids": ids, "window": window})
            retried = sorted(int(r[0]) for r in cur.fetchall())
            if retried:
                _record(
                    conn,
                    by,
                    endpoint_id,
                    retried,
                    f"retried all failed webhook deliveries of endpoint {endpoint_id}:"
                    f" {len(retried)} in this batch",
                )
        after = ids[-1]
        total += len(retried)
