"""The settlement backlog, as web's admission control reads it: how long the transfer waiting
longest to settle has waited, and whether a new transfer may be accepted meanwhile.

A transfer waits to settle while it is pending, not dead-lettered (an operator's to decide)
and not waiting out a retry's backoff (its message comes then). `BacklogGate` refuses new
transfers while the one of them accepted longest ago was accepted more than
TRANSFER_BACKLOG_MAX_MS ago, so that a backlog stops growing at about that much intake
(docs/operations.md, "Admission control"). Each web process reads the age at most every
`CHECK_INTERVAL` seconds, on the connection of the request that finds it stale; the others
go by the last reading meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from shared.ledger.operations import claim_stale_pending

log = logging.getLogger(__name__)

#: Seconds one web process goes by its last reading of the backlog's age.
CHECK_INTERVAL = 0.1


def oldest_waiting(conn: psycopg.Connection) -> float:
    """Seconds since the transfer waiting longest to settle was accepted; 0 when none waits.
    Reads the partial index `transfers_pending` (pending, not dead-lettered): the backlog
    and nothing else, which the gate itself keeps short. Raises driver errors."""
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM transfers"
        " WHERE status = 'pending' AND dead_lettered_at IS NULL"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
    ).fetchone()
    return max(0.0, float(row[0])) if row is not None else 0.0


@dataclass(frozen=True)
class Verdict:
    """What the gate says of one new transfer."""

    admit: bool
    #: Seconds the oldest waiting transfer had waited at the last reading.
    waited: float
    #: Ids this request should send again (see `BacklogGate.check`), usually none.
    resend: list[int] = field(default_factory=list)


class BacklogGate:
    """Admits new transfers while the oldest one waiting to settle was accepted at most
    `max_seconds` ago; 0 admits everything and reads nothing.

    Over the bound, the request that reads the age also claims the one transfer sent
    longest ago, if that was more than `max_seconds` ago (`claim_stale_pending`), for the
    caller to send again: a transfer whose message was lost (accepted while the broker was
    down) would otherwise hold every new transfer off until the sweeper's grace period
    passed, since a refused request sends nothing. Any worker's next batch takes it, topped
    up with the rest of the backlog (docs/architecture.md, "Settlement in batches")."""

    def __init__(
        self,
        max_seconds: float,
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_seconds = max_seconds
        self._interval = interval
        self._clock = clock
        self._reading = threading.Lock()  # one reader per process; the others don't wait
        self._read_at = float("-inf")
        self._waited = 0.0

    def check(self, conn: psycopg.Connection) -> Verdict:
        """The verdict for a transfer about to be recorded on `conn`. Reads Postgres only
        when the last reading is older than the interval and no other thread is reading.
        Raises driver errors."""
        if self.max_seconds <= 0:
            return Verdict(True, 0.0)
        resend: list[int] = []
        if self._clock() - self._read_at >= self._interval and self._reading.acquire(
            blocking=False
        ):
            try:
                waited = oldest_waiting(conn)
                if waited > self.max_seconds:
                    resend = claim_stale_pending(conn, grace_seconds=self.max_seconds, batch=1)
                if (waited > self.max_seconds) != (self._waited > self.max_seconds):
                    log.warning(
                        "settlement backlog %.1f s old (bound %.1f s): %s new transfers",
                        waited,
                        self.max_seconds,
                        "refusing" if waited > self.max_seconds else "accepting again",
                    )
                self._waited = waited
                self._read_at = self._clock()
            finally:
                self._reading.release()
        return Verdict(self._waited <= self.max_seconds, self._waited, resend)
