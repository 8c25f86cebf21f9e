"""`settle dead-letters list|retry`: the operator's view of transfers whose retries ran out.

Postgres is the record (`transfers.dead_lettered_at`, see `shared.ledger.dead_letters`); the
broker's dead-letter queue holds the failed messages (kept seven days by Redis or RabbitMQ,
and lost with the broker's data); `shared.broker.base.SettleBroker` reads it on either.
`retry` clears the mark, sends each transfer a fresh message (with a fresh retry budget)
and drops its old messages from the dead-letter queue. Exit codes: 0
done, 1 something asked for was not retried (or Postgres or the broker failed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

import psycopg

from shared.broker.base import SettleBroker
from shared.db.pool import connect_once
from shared.errors import BrokerUnavailable, first_line
from shared.ledger import dead_letters
from shared.ledger.currencies import format_amount
from shared.runtime.lifecycle import load_settings
from shared.runtime.settings import Settings
from worker import actors

log = logging.getLogger("settle.dead_letters")


def list_command(settings: Settings, broker: SettleBroker) -> int:
    with connect_once(settings, "dead-letters") as conn:
        rows = dead_letters.rows(conn)
    queued = broker.dead_letters()
    for row in rows:
        where = "in" if row["id"] in queued else "not in"
        print(
            f"transfer {row['id']}: {format_amount(row['amount'], row['currency'])} from account"
            f" {row['from_account_id']} to {row['to_account_id']}, {row['attempts']} attempt(s),"
            f" dead-lettered at {row['dead_lettered_at'].isoformat()}, message {where} the"
            f" dead-letter queue; last error: {row['last_error']}"
        )
    stale = set(queued) - {row["id"] for row in rows}
    print(
        f"{len(rows)} dead-lettered transfer(s);"
        f" {sum(len(v) for v in queued.values())} message(s) in the dead-letter queue"
    )
    if stale:
        print(
            f"{len(stale)} transfer(s) with messages in the dead-letter queue are no longer"
            " dead-lettered (settled, failed, or sent again); `retry --all` drops those messages"
        )
    return 0


def retry_command(settings: Settings, broker: SettleBroker, ids: list[int] | None) -> int:
    """Release and re-send `ids` (every dead-lettered transfer when None)."""
    with connect_once(settings, "dead-letters") as conn:
        released = dead_letters.release(conn, ids)
        skipped = dead_letters.statuses(conn, sorted(set(ids or []) - set(released)))
        unknown = sorted(set(ids or []) - set(released) - set(skipped))
    for tid, state in sorted(skipped.items()):
        print(f"transfer {tid}: not dead-lettered ({state}); skipped")
    for tid in unknown:
        print(f"transfer {tid}: no such transfer; skipped")
    try:
        broker.send_batches(released)
        for tid in released:
            print(f"transfer {tid}: sent again")
        queued = broker.dead_letters()
        with connect_once(settings, "dead-letters") as conn:
            still = dead_letters.statuses(conn, list(queued))
        # Parked again since we released (a new failure) keeps its message. A message may
        # carry several transfers: it is kept while any of them is parked.
        parked_now = {tid for tid, state in still.items() if state == "dead-lettered"}
        holders: dict[str, set[int]] = {}
        for tid, message_ids in queued.items():
            for rid in message_ids:
                holders.setdefault(rid, set()).add(tid)
        drop = [
            rid
            for rid, tids in holders.items()
            if not tids & parked_now and (ids is None or tids & set(released))
        ]
        broker.discard_dead_letters(drop)
    except BrokerUnavailable as exc:
        print(
            f"settle dead-letters: the broker failed ({exc}); the released transfers are no longer"
            " dead-lettered, so the sweeper sends them after SWEEPER_GRACE_SECONDS",
            file=sys.stderr,
        )
        return 1
    print(f"{len(released)} transfer(s) sent again")
    return 1 if skipped or unknown else 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(
        prog="settle dead-letters", description="list or retry transfers whose retries ran out"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list dead-lettered transfers")
    retry = actions.add_parser("retry", help="clear the mark and send them again")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="transfer ids")
    retry.add_argument("--all", action="store_true", help="every dead-lettered transfer")
    args = parser.parse_args(argv)
    settings = load_settings("dead-letters")
    broker = actors.install(settings)
    try:
        if args.action == "list":
            code = list_command(settings, broker)
        elif bool(args.ids) == bool(args.all):
            parser.error("give transfer ids or --all (not both)")
        else:
            code = retry_command(settings, broker, None if args.all else args.ids)
    except psycopg.Error as exc:
        print(f"settle dead-letters: Postgres failed: {first_line(exc)}", file=sys.stderr)
        code = 1
    except BrokerUnavailable as exc:
        print(f"settle dead-letters: the broker failed: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
