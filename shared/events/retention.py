"""Retention: the sweeper deletes events older than EVENT_RETENTION_DAYS, oldest first, in
small batches, each its own short transaction.

What is deleted is always a prefix of the sequence, up to the horizon: a batch takes the
oldest events, stops at the first one young enough to keep, and moves the mark
`transfer_event_retention.deleted_through` to the last id it deleted (and `deleted_until` to
the newest time among them), in the same transaction. `GET /events` answers 410 for an
`after` below the mark; `settle audit` knows that transfers last changed before
`deleted_until` may have no events left. Raises driver errors only.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg

from shared.events.feed import horizon

#: Events deleted per transaction: small enough that a batch holds its locks and its share of
#: the server's I/O briefly, large enough that a day of a busy service takes minutes.
BATCH = 1000

_DELETE = """
WITH head AS (
    SELECT id, created_at FROM transfer_events
     WHERE id <= %(upto)s ORDER BY id LIMIT %(batch)s
), keep AS (
    SELECT min(id) AS id FROM head WHERE created_at >= now() - make_interval(days => %(days)s)
), gone AS (
    DELETE FROM transfer_events e USING head
     WHERE e.id = head.id AND head.id < coalesce((SELECT id FROM keep), 9223372036854775807)
    RETURNING e.id, e.created_at
)
UPDATE transfer_event_retention r
   SET deleted_through = greatest(r.deleted_through, g.last),
       deleted_until = greatest(r.deleted_until, g.newest)
  FROM (SELECT max(id) AS last, max(created_at) AS newest, count(*) AS n FROM gone) g
 WHERE g.n > 0
RETURNING g.n
"""


def expire_batch(conn: psycopg.Connection, *, days: int, batch: int = BATCH) -> int:
    """Delete the oldest events up to `batch` of them, as long as each is older than `days`
    days and none is beyond the horizon, and move the retention mark; return how many were
    deleted (0: nothing is due)."""
    oldest = conn.execute(
        "SELECT created_at < now() - make_interval(days => %s) FROM transfer_events"
        " ORDER BY id LIMIT 1",
        (days,),
    ).fetchone()
    if oldest is None or not oldest[0]:
        return 0  # the oldest event is young enough: one index probe per sweep
    upto = horizon(conn)
    with conn.transaction():
        row = conn.execute(_DELETE, {"upto": upto, "batch": batch, "days": days}).fetchone()
    return int(row[0]) if row else 0


def expire(conn: psycopg.Connection, *, days: int, batch: int = BATCH) -> Iterator[int]:
    """`expire_batch` until nothing is due, yielding each batch's count, so that a caller can
    stop between batches (a sweeper asked to stop)."""
    while True:
        deleted = expire_batch(conn, days=days, batch=batch)
        if deleted == 0:
            return
        yield deleted
        if deleted < batch:
            return
