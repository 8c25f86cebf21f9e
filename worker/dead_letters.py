"""`settle dead-letters list|retry|cancel`: the operator's view of transfers whose retries ran
out, and what the dashboard's actions do, from a terminal.

Postgres is the record (`transfers.dead_lettered_at`, see `shared.ledger.dead_letters`); the
broker's dead-letter queue holds the failed messages (kept seven days by Redis or RabbitMQ,
and lost with the broker's data); `shared.broker.base.SettleBroker` reads it on either.
`retry` clears the mark and sends each transfer a fresh message (with a fresh retry budget);
`cancel` ends each `failed` with `cancelled_by_operator`, moving no money, after a
confirmation (`--yes` without a terminal). Both take transfer ids, `--all`, or the
dashboard's filters (`--account`, `--user`, `--currency`, `--min-amount`, `--max-amount`,
`--error`, `--older-than-minutes`), work in batches of `operator_actions.BATCH`, record what
they did in `operator_actions` (as the dashboard does, without a key: `settle audit-log`
shows "the command line"), and then drop the dead-letter messages none of whose transfers
is dead-lettered any more. Exit codes: 0 done, 1 something asked for was not done (or
Postgres or the broker failed), 2 bad usage or no confirmation.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

import psycopg

from shared.broker.base import SettleBroker
from shared.commands.failures import reported
from shared.config import Settings
from shared.db.pool import connect_once
from shared.errors import BrokerUnavailable, InvalidRequest
from shared.ledger import attention, dead_letters, operator_actions
from shared.ledger.attention import TransferFilter
from shared.ledger.auth import SYSTEM
from shared.ledger.currencies import format_amount
from shared.runtime.boot import load_settings
from worker import actors

log = logging.getLogger("settle.dead_letters")

#: The dashboard's filter fields a command takes as options (`--min-amount` for
#: `min_amount`); `state` is always `dead`, and dead-lettered transfers have no failure code.
FILTERS = ("account", "user", "currency", "min_amount", "max_amount", "error", "older_than_minutes")
#: Who the commands act as: the service itself, recorded with no key.
_BY = operator_actions.require_acting(SYSTEM)


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
    listed = {row["id"] for row in rows}
    carried = _messages(queued)
    print(dead_letters.count_line(len(rows), len(carried)))
    cleared = [mid for mid, tids in carried.items() if not tids & listed]
    if cleared:
        print(
            f"{len(cleared)} message(s) in the dead-letter queue carry no dead-lettered transfer"
            " (settled, failed, or sent again); the next retry, cancel or sweep drops them"
        )
    return 0


def _messages(queued: dict[int, list[str]]) -> dict[str, set[int]]:
    """Broker id -> transfer ids, from transfer id -> broker ids."""
    carried: dict[str, set[int]] = {}
    for tid, message_ids in queued.items():
        for mid in message_ids:
            carried.setdefault(mid, set()).add(tid)
    return carried


class Selection:
    """What a command acts on: transfer ids, or the dead-lettered transfers a filter matches
    (`--all`: an empty filter)."""

    def __init__(self, ids: list[int], wanted: TransferFilter | None) -> None:
        self.ids = ids
        self.wanted = wanted

    def describe(self) -> str:
        if self.wanted is None:
            return f"transfer(s) {', '.join(map(str, self.ids))}"
        shown = " ".join(f"{k}={v}" for k, v in sorted(self.wanted.params().items()))
        return f"dead-lettered transfers matching {shown}"


def selection(args: argparse.Namespace) -> Selection:
    """The selection of `args`. Raises `InvalidRequest` unless exactly one of ids, `--all`
    and filters is given, or for a malformed filter value."""
    given = {name: getattr(args, name) for name in FILTERS if getattr(args, name) is not None}
    if sum((bool(args.ids), args.all, bool(given))) != 1:
        raise InvalidRequest("give transfer ids, --all, or filters (one of the three)")
    if args.ids:
        return Selection(sorted(set(args.ids)), None)
    return Selection([], attention.transfer_filter({"state": "dead", **given}, strict=True))


def _report_skipped(settings: Settings, asked: Sequence[int], done: Sequence[int]) -> bool:
    """Print why each of `asked` not in `done` was left alone; True when any was."""
    left = sorted(set(asked) - set(done))
    if not left:
        return False
    with connect_once(settings, "dead-letters") as conn:
        states = dead_letters.statuses(conn, left)
    for tid in left:
        if tid in states:
            print(f"transfer {tid}: not dead-lettered ({states[tid]}); skipped")
        else:
            print(f"transfer {tid}: no such transfer; skipped")
    return True


def _batches(
    settings: Settings,
    chosen: Selection,
    by_ids: Callable[[psycopg.Connection, list[int]], list[int]],
    by_filter: Callable[[psycopg.Connection, TransferFilter, int], list[int]],
) -> Iterator[list[int]]:
    """The batches acted on, each in a transaction of its own, the connection closed before
    the caller works on it: the ids in one, or a filter's matches a batch at a time."""
    if chosen.wanted is None:
        with connect_once(settings, "dead-letters") as conn:
            done = by_ids(conn, chosen.ids)
        if done:
            yield done
        return
    after = 0
    while True:
        with connect_once(settings, "dead-letters") as conn:
            batch = by_filter(conn, chosen.wanted, after)
        if not batch:
            return
        yield batch
        after = batch[-1]


def retry_command(settings: Settings, broker: SettleBroker, chosen: Selection) -> int:
    """Release the chosen dead-lettered transfers and send each a message, a batch at a
    time, then drop the dead letters none of whose transfers is dead-lettered."""
    batches = _batches(
        settings,
        chosen,
        lambda conn, ids: operator_actions.retry(conn, ids, by=_BY),
        lambda conn, wanted, after: operator_actions.retry_batch(conn, wanted, after=after, by=_BY),
    )
    released: list[int] = []
    try:
        for batch in batches:
            released.extend(batch)
            broker.send_batches(batch)
            for tid in batch:
                print(f"transfer {tid}: sent again")
    except BrokerUnavailable as exc:
        print(
            f"settle dead-letters: the broker failed ({exc}); the released transfers are no longer"
            " dead-lettered, so the sweeper sends them after SWEEPER_GRACE_SECONDS",
            file=sys.stderr,
        )
        return 1
    skipped = _report_skipped(settings, chosen.ids, released)
    _clear(settings, broker)
    print(f"{len(released)} transfer(s) sent again")
    return 1 if skipped else 0


def cancel_command(
    settings: Settings, broker: SettleBroker, chosen: Selection, *, confirmed: bool
) -> int:
    """After a confirmation, end the chosen dead-lettered transfers `failed`
    (`cancelled_by_operator`), moving no money, a batch at a time; then drop the dead
    letters none of whose transfers is dead-lettered."""
    with connect_once(settings, "dead-letters") as conn:
        if chosen.wanted is None:
            count = len(dead_letters.still_dead_lettered(conn, chosen.ids))
        else:
            count = attention.count_matching(conn, chosen.wanted, stuck_after_seconds=0)[
                "retryable"
            ]
    if not confirmed and not _confirm(count, chosen):
        return 2
    batches = _batches(
        settings,
        chosen,
        lambda conn, ids: [tid for tid in ids if operator_actions.cancel(conn, tid, by=_BY)],
        lambda conn, wanted, after: operator_actions.cancel_batch(
            conn, wanted, after=after, by=_BY
        ),
    )
    cancelled: list[int] = []
    for batch in batches:
        cancelled.extend(batch)
        for tid in batch:
            print(f"transfer {tid}: cancelled (failed, cancelled_by_operator)")
    skipped = _report_skipped(settings, chosen.ids, cancelled)
    _clear(settings, broker)
    print(f"{len(cancelled)} transfer(s) cancelled")
    return 1 if skipped else 0


def _confirm(count: int, chosen: Selection) -> bool:
    """Ask on the terminal before a cancel, which cannot be undone; without one, refuse."""
    question = (
        f"Cancel {count} dead-lettered transfer(s) ({chosen.describe()})? Each ends failed"
        " (cancelled_by_operator), moving no money; this cannot be undone. [y/N] "
    )
    if not sys.stdin.isatty():
        print(
            f"settle dead-letters: {count} transfer(s) would be cancelled, which cannot be"
            " undone; add --yes to confirm without a terminal",
            file=sys.stderr,
        )
        return False
    if input(question).strip().lower() in ("y", "yes"):
        return True
    print("settle dead-letters: nothing cancelled", file=sys.stderr)
    return False


def _clear(settings: Settings, broker: SettleBroker) -> None:
    """Drop the dead-letter messages none of whose transfers is dead-lettered any more. A
    failure leaves them to the sweeper: a notice, not an error."""

    def still(ids: Sequence[int]) -> set[int]:
        with connect_once(settings, "dead-letters") as conn:
            return dead_letters.still_dead_lettered(conn, ids)

    try:
        dropped = broker.drop_cleared_dead_letters(still)
    except BrokerUnavailable as exc:
        print(
            f"settle dead-letters: could not drop dead-letter messages ({exc});"
            " the sweeper drops them once it can",
            file=sys.stderr,
        )
        return
    if dropped:
        print(f"{dropped} dead-letter message(s) dropped")


def _selecting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="transfer ids")
    parser.add_argument("--all", action="store_true", help="every dead-lettered transfer")
    for name in FILTERS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=name.upper(),
            help=f"only dead-lettered transfers with this {name.replace('_', ' ')}"
            " (as the dashboard's filter)",
        )


def main(argv: list[str] | None = None) -> None:
    """List, retry or cancel transfers whose retries ran out."""
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(
        prog="settle dead-letters",
        description="list, retry or cancel transfers whose retries ran out",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list dead-lettered transfers")
    retry = actions.add_parser("retry", help="clear the mark and send them again")
    _selecting(retry)
    cancel = actions.add_parser(
        "cancel", help="end them failed (cancelled_by_operator), moving no money"
    )
    _selecting(cancel)
    cancel.add_argument("--yes", action="store_true", help="do not ask for a confirmation")
    args = parser.parse_args(argv)
    try:
        chosen = None if args.action == "list" else selection(args)
    except InvalidRequest as exc:
        parser.error(exc.message)
    settings = load_settings("dead-letters")
    broker = actors.declare(settings)
    with reported("dead-letters", "Postgres failed"):
        if chosen is None:
            code = list_command(settings, broker)
        elif args.action == "retry":
            code = retry_command(settings, broker, chosen)
        else:
            code = cancel_command(settings, broker, chosen, confirmed=args.yes)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
