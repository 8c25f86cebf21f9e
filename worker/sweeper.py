"""The sweeper: re-sends transfers still pending after a grace period.

A lost message (an enqueue that failed, a Redis that lost its data, a worker killed
mid-flight) would otherwise strand its transfer; sending twice is harmless because the
actor is idempotent. One process, one connection.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db.leases import LeaseKeeper
from shared.db.pool import connection, create_pool
from shared.errors import first_line
from shared.ledger import operations as ledger
from shared.runtime.lifecycle import boot_check, configure_logging, load_settings, plan_or_exit
from shared.runtime.settings import Settings

log = logging.getLogger("settle.sweeper")


def sweep_once(pool: ConnectionPool, settings: Settings) -> int:
    """Re-send every transfer pending past the grace period; return how many were sent."""
    # Imported here, not at the top: the broker module builds the broker from the
    # environment, which `main` first vets with one clear line for a bad setting.
    from worker.actors import send_batches
    from worker.broker import broker

    sent = 0
    while True:
        with connection(pool) as conn:
            ids = ledger.claim_stale_pending(
                conn, grace_seconds=settings.sweeper_grace_seconds, batch=settings.sweeper_batch
            )
        if ids:
            send_batches(broker, ids)
        sent += len(ids)
        if len(ids) < settings.sweeper_batch:
            return sent


def run(settings: Settings, stop: threading.Event, budget: int) -> None:
    """Sweep every SWEEPER_INTERVAL_SECONDS until `stop` is set, on one connection leased
    from the `budget`."""
    lease = LeaseKeeper(settings, "sweeper", wanted=1, budget=budget)
    if lease.acquire(stopping=stop.is_set) == 0:
        return
    pool = create_pool(settings, "sweeper", size=1)
    try:
        pool.open(wait=True, timeout=10.0)
    except PoolTimeout:
        pool.close()
        lease.close()
        raise
    lease.keep(pool)
    log.info(
        "sweeping every %ss for transfers pending longer than %ss",
        settings.sweeper_interval_seconds,
        settings.sweeper_grace_seconds,
    )
    try:
        while not stop.is_set():
            try:
                sent = sweep_once(pool, settings)
                if sent:
                    log.info("re-sent %d stale pending transfer(s)", sent)
            except Exception as exc:  # one failed pass must not end the sweeper
                log.warning("sweep failed, will try again: %s", exc)
            stop.wait(settings.sweeper_interval_seconds)
    finally:
        pool.close()
        lease.close()
        log.info("sweeper stopped")


def main() -> None:
    configure_logging("sweeper")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before the boot checks, so that a stop request while booting is honoured.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = load_settings("sweeper")
    boot_check(settings, "sweeper")
    plan = plan_or_exit(settings, "sweeper")
    try:
        run(settings, stop, plan.capacity.available)
    except (psycopg.Error, PoolTimeout) as exc:
        reason = first_line(exc)
        print(f"settle sweeper: cannot reach Postgres: {reason}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
