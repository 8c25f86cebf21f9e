"""Deliveries in Postgres: made from the event sequence, handed to the workers, attempted one
at a time, and recorded.

- `dispatch_batch` (the dispatcher): reads the events after the stored cursor, up to the
  horizon (`shared.events.feed`), makes one `webhook_deliveries` row per matching event and
  live endpoint, and moves the cursor, in one transaction: every event gets its deliveries
  exactly once, however often the dispatcher dies. An endpoint receives the events of its
  types made since it was created, of its user's transfers (an operator's: all).
- `claim_due` (the dispatcher): the deliveries due for an attempt that no message is known
  to carry, marked as sent (`enqueued_at`); a message unconsumed for the grace period is
  sent again, so a lost message delays a delivery and never loses it.
- `claim` (a delivery worker): takes one due delivery for one attempt, with a lease: its next
  attempt is pushed `LEASE` ahead, so a worker killed mid-attempt leaves a delivery that
  falls due again once the lease is over (at least once).
- `record` (a delivery worker): the attempt's outcome, in `webhook_attempts` and on the
  delivery: delivered on a 2xx, else the next attempt after an exponential backoff with
  jitter, or failed once `retry_until` (about three days) would be passed.

No connection is held during an HTTP request: `claim` and `record` are each one short
transaction. Functions raise driver errors only.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shared.events import feed

#: Seconds an attempt may take before its delivery falls due again: the request's timeout,
#: and room to record the outcome. A worker killed mid-attempt delays the delivery by this.
LEASE = datetime.timedelta(seconds=15)


@dataclass(frozen=True)
class Backoff:
    """When the next attempt of a failed delivery is due: `first` seconds after the first
    failed attempt, doubling per attempt up to `cap`, each delay drawn uniformly between its
    half and itself (jitter, so that deliveries failing together do not retry together);
    given up after `window` since the delivery was made."""

    first: float
    cap: float
    window: datetime.timedelta

    def delay(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds before the attempt after `attempts` failed ones."""
        full = min(self.cap, self.first * 2 ** min(attempts - 1, 40))
        return full * (0.5 + draw() / 2)


# The event as GET /events answers it, with what matching needs: the owners of its accounts.
_EVENTS = """
SELECT ev.*, fa.user_id AS from_user_id, ta.user_id AS to_user_id
  FROM ({events}) ev
  JOIN accounts fa ON fa.id = ev.from_account_id
  JOIN accounts ta ON ta.id = ev.to_account_id
 ORDER BY ev.event_id
"""

_INSERT = """
INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, retry_until)
SELECT d.endpoint_id, d.event_id, d.event_type, d.body, now() + %(window)s
  FROM unnest(%(endpoints)s::bigint[], %(events)s::bigint[], %(types)s::text[],
              %(bodies)s::text[]) AS d(endpoint_id, event_id, event_type, body)
ON CONFLICT (endpoint_id, event_id) DO NOTHING
"""


def body_of(event: Mapping[str, Any]) -> str:
    """The JSON a receiver gets for `event` (`feed.render`'s shape): compact, as the API
    writes it, so that it reads the same as the event in GET /events."""
    return orjson.dumps(event).decode()


def dispatch_batch(conn: psycopg.Connection, *, batch: int, window: datetime.timedelta) -> int:
    """Make the deliveries of the next `batch` events after the cursor (up to the horizon)
    and move the cursor past them; return how many events were read (`batch`: there may be
    more; 0 also when no endpoint is live, and the cursor moved to the horizon).
    Deliveries made now may be retried for `window`. One transaction; a concurrent caller
    waits for it (the cursor's row lock) and then goes on from where it stopped."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT dispatched_through FROM webhook_dispatch_cursor FOR UPDATE")
        mark = cur.fetchone()
        assert mark is not None
        after = int(mark["dispatched_through"])
        # After the lock, in a later statement than the events are read in (see `horizon`).
        upto = feed.horizon(conn)
        if upto <= after:
            return 0
        cur.execute(
            "SELECT id, user_id, event_types, created_at FROM webhook_endpoints"
            " WHERE deleted_at IS NULL"
        )
        endpoints = cur.fetchall()
        if not endpoints:
            # Nobody listens: the events are passed over without being read.
            cur.execute("UPDATE webhook_dispatch_cursor SET dispatched_through = %s", (upto,))
            return 0
        query = feed.EventQuery(limit=batch)
        cur.execute(
            sql.SQL(_EVENTS).format(events=feed.events_sql(query, None)),
            {"after": after, "upto": upto, "types": [], "fetch": batch},
        )
        events = cur.fetchall()
        rows: dict[str, list[Any]] = {"endpoints": [], "events": [], "types": [], "bodies": []}
        for event in events:
            owners = {event["from_user_id"], event["to_user_id"]}
            body: str | None = None
            for endpoint in endpoints:
                if (
                    event["event_type"] in endpoint["event_types"]
                    and (endpoint["user_id"] is None or endpoint["user_id"] in owners)
                    and event["event_created_at"] >= endpoint["created_at"]
                ):
                    body = body or body_of(feed.render(event))
                    rows["endpoints"].append(endpoint["id"])
                    rows["events"].append(event["event_id"])
                    rows["types"].append(event["event_type"])
                    rows["bodies"].append(body)
        if rows["events"]:
            cur.execute(_INSERT, {**rows, "window": window})
        # A full batch ends at its last event; a short one saw every event up to the horizon.
        through = events[-1]["event_id"] if len(events) >= batch else upto
        cur.execute("UPDATE webhook_dispatch_cursor SET dispatched_through = %s", (through,))
        return len(events)


def claim_due(conn: psycopg.Connection, *, batch: int, grace_seconds: float) -> list[int]:
    """Ids of up to `batch` pending deliveries due for an attempt that no message is known to
    carry (none sent, or one sent more than `grace_seconds` ago and never consumed), oldest
    due first, marked as sent now. Rows another transaction holds are skipped."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET enqueued_at = now() WHERE id IN ("
            " SELECT id FROM webhook_deliveries WHERE status = 'pending'"
            " AND next_attempt_at <= now()"
            " AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => %s))"
            " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id",
            (grace_seconds, batch),
        )
        return sorted(int(row[0]) for row in cur.fetchall())


def unclaim(conn: psycopg.Connection, delivery_ids: Sequence[int]) -> None:
    """Forget that messages were sent for `delivery_ids` (the send failed), so that the next
    `claim_due` takes them again at once."""
    conn.execute(
        "UPDATE webhook_deliveries SET enqueued_at = NULL"
        " WHERE id = ANY(%s) AND status = 'pending'",
        (list(delivery_ids),),
    )


@dataclass(frozen=True)
class Attempt:
    """What one attempt of a delivery needs, read when it is claimed: where to send what,
    the material of its secrets, and how many attempts came before."""

    delivery_id: int
    event_id: int
    endpoint_id: int
    url: str
    body: bytes
    secret_salt: bytes
    secret_key_check: bytes
    previous_secret_salt: bytes | None
    attempts: int


def claim(conn: psycopg.Connection, delivery_id: int) -> Attempt | None:
    """Delivery `delivery_id` for one attempt, its next attempt pushed `LEASE` ahead; None
    when it is not pending, not due (another attempt holds it, or its backoff runs), or
    gone. A delivery whose endpoint was deleted meanwhile is cancelled here."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "UPDATE webhook_deliveries d"
            " SET next_attempt_at = now() + %(lease)s, enqueued_at = NULL,"
            "     status = CASE WHEN e.deleted_at IS NULL THEN d.status ELSE 'cancelled' END,"
            "     finished_at = CASE WHEN e.deleted_at IS NULL THEN NULL ELSE now() END"
            " FROM webhook_endpoints e"
            " WHERE d.id = %(id)s AND e.id = d.endpoint_id AND d.status = 'pending'"
            " AND d.next_attempt_at <= now()"
            " RETURNING d.id, d.event_id, d.endpoint_id, d.body, d.attempts, d.status, e.url,"
            " e.secret_salt, e.secret_key_check,"
            " CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_salt END"
            "   AS previous_secret_salt",
            {"id": delivery_id, "lease": LEASE},
        )
        row = cur.fetchone()
    if row is None or row["status"] != "pending":
        return None
    return Attempt(
        delivery_id=row["id"],
        event_id=row["event_id"],
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        body=row["body"].encode(),
        secret_salt=bytes(row["secret_salt"]),
        secret_key_check=bytes(row["secret_key_check"]),
        previous_secret_salt=(
            None if row["previous_secret_salt"] is None else bytes(row["previous_secret_salt"])
        ),
        attempts=row["attempts"],
    )


@dataclass(frozen=True)
class Outcome:
    """How an attempt went: the status code answered (None: no answer), the error (None for
    a 2xx), and how long it took."""

    status_code: int | None
    error: str | None
    latency_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def record(conn: psycopg.Connection, attempt: Attempt, outcome: Outcome, backoff: Backoff) -> str:
    """Record `outcome` of `attempt` and decide what follows; return the delivery's status
    (delivered, pending with its next attempt scheduled, or failed). An attempt recorded
    after its delivery stopped being pending (cancelled meanwhile) is kept as history and
    changes nothing else."""
    attempts = attempt.attempts + 1
    delay = datetime.timedelta(seconds=backoff.delay(attempts))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error)"
            " VALUES (%s, %s, %s, %s)",
            (attempt.delivery_id, outcome.status_code, outcome.latency_ms, outcome.error),
        )
        cur.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1,"
            " last_status_code = %(code)s, last_error = %(error)s,"
            " status = CASE WHEN %(delivered)s THEN 'delivered'"
            "   WHEN now() + %(delay)s > retry_until THEN 'failed' ELSE 'pending' END,"
            " next_attempt_at = CASE WHEN %(delivered)s THEN next_attempt_at"
            "   ELSE now() + %(delay)s END,"
            " finished_at = CASE WHEN %(delivered)s OR now() + %(delay)s > retry_until"
            "   THEN now() END"
            " WHERE id = %(id)s AND status = 'pending'"
            " RETURNING status",
            {
                "id": attempt.delivery_id,
                "code": outcome.status_code,
                "error": outcome.error,
                "delivered": outcome.delivered,
                "delay": delay,
            },
        )
        row = cur.fetchone()
    return "cancelled" if row is None else str(row[0])
