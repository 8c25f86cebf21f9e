"""The webhook dispatcher: a thread of the sweeping process that turns new transfer events
into deliveries and hands due deliveries to the delivery workers.

Every `INTERVAL` seconds (at once again while there is a backlog) it makes the deliveries of
the events after its cursor (`shared.webhooks.deliveries.dispatch_batch`, one transaction
that moves the cursor), then sends a message for each delivery due for an attempt that no
message carries (`claim_due`) on the `webhooks` queue. Postgres is the record: a send that
fails is forgotten and retried at the next pass, a message lost on the way is sent again
after SWEEPER_GRACE_SECONDS, and a delivery whose worker died mid-attempt falls due again
when its lease ends. It uses the sweeper's pool (two connections: one sweeps, one
dispatches) and never holds a connection while it talks to the broker.
"""

from __future__ import annotations

import datetime
import logging
import threading

from psycopg_pool import ConnectionPool

from shared.broker.base import SettleBroker
from shared.config import Settings
from shared.db.pool import connection
from shared.errors import BrokerUnavailable
from shared.runtime.signals import StopRequest
from shared.webhooks import deliveries

log = logging.getLogger("settle.dispatcher")

#: Seconds between two passes when nothing is waiting: how late a delivery may start.
INTERVAL = 0.2
#: Events read, and due deliveries sent, per transaction.
BATCH = 500


def dispatch_once(pool: ConnectionPool, settings: Settings, broker: SettleBroker) -> bool:
    """One pass: make the deliveries of new events, send the due ones; return whether a
    batch was full (more may be waiting). Raises `BrokerUnavailable` (the due deliveries
    are taken again next pass) and the pool's errors."""
    window = datetime.timedelta(hours=settings.webhook_retry_hours)
    with connection(pool) as conn:
        read = deliveries.dispatch_batch(conn, batch=BATCH, window=window)
        due = deliveries.claim_due(conn, batch=BATCH, grace_seconds=settings.sweeper_grace_seconds)
    if due:
        try:
            broker.send_deliveries(due)
        except BrokerUnavailable:
            with connection(pool) as conn:
                deliveries.unclaim(conn, due)
            raise
        log.debug("sent %d webhook delivery(ies)", len(due))
    return read >= BATCH or len(due) >= BATCH


def run(pool: ConnectionPool, settings: Settings, broker: SettleBroker, stop: StopRequest) -> None:
    """Dispatch until `stop` is set. A pass that fails is logged and tried again."""
    log.info("dispatching webhook deliveries every %ss", INTERVAL)
    while not stop.is_set():
        try:
            busy = dispatch_once(pool, settings, broker)
        except Exception as exc:  # one failed pass must not end the dispatcher
            log.warning("webhook dispatch failed, will try again: %s", exc)
            busy = False
        if not busy:
            stop.wait(INTERVAL)
    log.info("dispatcher stopped")


def start(
    pool: ConnectionPool, settings: Settings, broker: SettleBroker, stop: StopRequest
) -> threading.Thread:
    """`run` in a thread of its own (joined by the caller after `stop` is set)."""
    thread = threading.Thread(
        target=run, args=(pool, settings, broker, stop), name="settle-dispatcher", daemon=True
    )
    thread.start()
    return thread
