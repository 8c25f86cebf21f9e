"""The sweeper: re-sends transfers still pending after a grace period.

A lost message (an enqueue that failed, a Redis that lost its data, a worker killed
mid-flight) would otherwise strand its transfer; sending twice is harmless because the
actor is idempotent. A transfer waiting out a retry's backoff is left alone until its next
attempt is overdue by the grace period (its retry message was lost), and then sent within
the retry budget it has left, which Postgres keeps.

Each pass also deletes the transfer events older than EVENT_RETENTION_DAYS, a small batch
per transaction (`shared.events.retention`), and drops the broker's dead-letter messages
none of whose transfers is dead-lettered any more (`DeadLetterClearing`): retried or
cancelled by an operator whose own clearing failed, or never marked because Postgres was
down when their retries ran out (such a transfer is sent again by the sweep itself).

Beside the sweep, a thread of the same process dispatches webhook deliveries
(`worker.dispatcher`). Two connections: one for each.

`settle sweeper` is a small supervisor (`shared.runtime.supervisor.Supervisor`) over one
forked sweeping process: a sweep that fails is logged and tried again at the next interval,
and a sweeping process that dies (killed, out of memory, an error no pass catches, Postgres
or the broker unreachable when it boots) is replaced with backoff, so that the sweeper
never exits on its own (but for a refused setting or plan) and honcho never stops web and
worker because of it. In-process restarts could not survive a kill.
"""

from __future__ import annotations

import logging
import time

from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.config import Settings
from shared.db.budget import Plan
from shared.db.pool import connection
from shared.events import retention
from shared.ledger import dead_letters
from shared.ledger import operations as ledger
from shared.runtime.children import forked
from shared.runtime.leased_pool import leased_pool
from shared.runtime.signals import StopRequest
from shared.runtime.supervised import Boot, Children, run_supervised
from worker import dispatcher

log = logging.getLogger("settle.sweeper")


def sweep_once(pool: ConnectionPool, settings: Settings, broker: SettleBroker) -> int:
    """Re-send through `broker` every transfer pending past the grace period (and, in a
    retry, past the time its next attempt was due); return how many were sent. Raises
    `BrokerUnavailable` and driver errors."""
    sent = 0
    while True:
        with connection(pool) as conn:
            ids = ledger.claim_stale_pending(
                conn, grace_seconds=settings.sweeper_grace_seconds, batch=settings.sweeper_batch
            )
        if ids:
            broker.send_batches(ids)
        sent += len(ids)
        if len(ids) < settings.sweeper_batch:
            return sent


#: A pass reads the dead-letter queue when its size changed since the last clearing, and at
#: least this often while it holds messages (on RabbitMQ a reading takes every message out
#: and puts back those it keeps).
CLEAR_EVERY_SECONDS = 60.0


class DeadLetterClearing:
    """Drops the dead-letter messages none of whose transfers is dead-lettered any more
    (`SettleBroker.drop_cleared_dead_letters`), reading the queue only when it may have
    something to drop: when it holds messages, and their count changed since the last
    clearing or `every` seconds have passed."""

    def __init__(self, every: float = CLEAR_EVERY_SECONDS) -> None:
        self._every = every
        self._left: int | None = None  # messages the last clearing left
        self._at = 0.0

    def __call__(self, pool: ConnectionPool, broker: SettleBroker) -> int:
        """Clear if it is time; return how many messages were dropped. Raises
        `BrokerUnavailable` and the pool's errors."""
        dead = broker.depths().get("dead", 0)
        now = time.monotonic()
        if dead == 0 or (dead == self._left and now - self._at < self._every):
            self._left = dead
            return 0
        dropped = broker.drop_cleared_dead_letters(dead_letters.still_dead_lettered_in(pool))
        self._left, self._at = dead - dropped, now
        return dropped


def expire_events(pool: ConnectionPool, settings: Settings, stop: StopRequest) -> int:
    """Delete the events older than EVENT_RETENTION_DAYS, batch by batch, until none is due
    or a stop is requested; return how many were deleted. Raises the pool's errors."""
    deleted = 0
    with connection(pool) as conn:
        for batch in retention.expire(conn, days=settings.event_retention_days):
            deleted += batch
            if stop.is_set():
                break
    return deleted


def run(settings: Settings, stop: StopRequest, plan: Plan) -> int:
    """Sweep every SWEEPER_INTERVAL_SECONDS until `stop` is set, on one leased connection;
    return the exit code (0)."""
    # After the fork (the broker's client belongs to this process), and after
    # `multiproc.prepare` (the actors bring prometheus-client).
    from worker import actors

    broker = actors.declare(settings)
    with leased_pool(settings, "sweeper", plan, stopping=stop.is_set) as pool:
        if pool is None:
            return 0
        log.info(
            "sweeping every %ss for transfers pending longer than %ss",
            settings.sweeper_interval_seconds,
            settings.sweeper_grace_seconds,
        )
        clearing = DeadLetterClearing()
        dispatching = dispatcher.start(pool, settings, broker, stop)
        while not stop.is_set():
            try:
                sent = sweep_once(pool, settings, broker)
                if sent:
                    log.info("re-sent %d stale pending transfer(s)", sent)
                expired = expire_events(pool, settings, stop)
                if expired:
                    log.info(
                        "deleted %d event(s) older than %d days",
                        expired,
                        settings.event_retention_days,
                    )
                dropped = clearing(pool, broker)
                if dropped:
                    log.info(
                        "dropped %d dead-letter message(s) whose transfers are no longer"
                        " dead-lettered",
                        dropped,
                    )
            except Exception as exc:  # one failed pass must not end the sweeper
                log.warning("sweep failed, will try again: %s", exc)
            stop.wait(settings.sweeper_interval_seconds)
        dispatching.join()  # before the pool closes
    log.info("sweeper stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Re-send stranded pending transfers, expire old events, drop cleared dead letters."""
    run_supervised("sweeper", __doc__, argv, sweeping_process)


def sweeping_process(boot: Boot) -> Children:
    """One forked process that sweeps until stopped."""
    return Children(
        "sweeping process", forked("sweeper", lambda stop: run(boot.settings, stop, boot.plan))
    )


if __name__ == "__main__":
    main()
