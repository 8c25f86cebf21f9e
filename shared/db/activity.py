"""Who holds which Postgres connections right now, read from pg_stat_activity.

Every connection of the service carries `application_name = settle:<role>:<host>:<pid>`, so
grouping by role shows how the budget is used. `Sampler` polls that in a background thread
and keeps the peak per role; both raise only driver errors (the sampler's, when it leaves
the `with` block).
"""

from __future__ import annotations

import threading
from collections import Counter

import psycopg

ROLES = ("web", "events", "worker", "webhooks", "sweeper")


def connections_by_role(
    conn: psycopg.Connection, database: str, *, include_self: bool = False
) -> Counter[str]:
    """Connections to `database` per role (web, events, worker, sweeper, and e.g. web-lease for a
    process waiting for its lease), this connection excluded unless `include_self` (a pooled
    connection asking is one of its role's)."""
    rows = conn.execute(
        "SELECT split_part(application_name, ':', 2), count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND application_name LIKE 'settle:%%'"
        " AND (%s OR pid <> pg_backend_pid()) GROUP BY 1",
        (database, include_self),
    ).fetchall()
    return Counter({role: int(count) for role, count in rows})


class Sampler:
    """Samples `connections_by_role` every `interval` seconds until stopped; keeps the peak
    per role and the peak of the pools' total (web + events + worker + sweeper)."""

    def __init__(self, database_url: str, database: str, *, interval: float = 0.1) -> None:
        self._url = database_url
        self._database = database
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)
        self.peak: Counter[str] = Counter()
        self.peak_total = 0
        self.samples = 0
        self.error: BaseException | None = None

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None and exc_info[0] is None:
            # Peaks from a sampler that stopped early would understate the truth.
            raise self.error

    def _run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True) as conn:
                while not self._stop.is_set():
                    self.sample(conn)
                    self._stop.wait(self._interval)
        except BaseException as exc:  # surfaced to the caller through `error`
            self.error = exc

    def sample(self, conn: psycopg.Connection) -> Counter[str]:
        now = connections_by_role(conn, self._database)
        for role, count in now.items():
            self.peak[role] = max(self.peak[role], count)
        self.peak_total = max(self.peak_total, sum(now[role] for role in ROLES))
        self.samples += 1
        return now
