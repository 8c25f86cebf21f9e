"""`settle webhooks list|deliveries|attempts|retry`: the dashboard's webhooks view from a
terminal.

`list` shows every live endpoint, failing ones first (deliveries given up, then those being
retried); `deliveries ENDPOINT_ID` an endpoint's deliveries, newest first (`--status failed`
for those given up); `attempts DELIVERY_ID` every attempt of one delivery; `retry` sets failed
deliveries pending again with a fresh retry window (`--delivery ID`, repeatable, or
`--endpoint ID --all-failed`), recorded in the operator action record as the command line's
(`settle audit-log`). The dispatcher sends them; no broker is needed to retry. Exit codes: 0
done, 1 an unknown endpoint or delivery (nothing changed) or Postgres failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime

from shared.commands import Subparsers
from shared.commands.failures import reported
from shared.db import Row
from shared.db.pool import connect_once
from shared.errors import NotFound
from shared.ledger import operator_actions
from shared.ledger.auth import SYSTEM
from shared.runtime.boot import load_settings
from shared.runtime.exits import EXIT_FAILED, EXIT_REFUSED, exit_with
from shared.text_table import text_table
from shared.webhooks import operator

TIME = "%Y-%m-%d %H:%M:%S%z"
#: Longest error text a table shows (the dashboard shows it whole).
ERROR_WIDTH = 80


def _positive_id(raw: str) -> int:
    """An id argument: a whole number from 1 to 2^63-1."""
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) < 2**63:
        return int(raw)
    raise argparse.ArgumentTypeError(f"{raw!r} is not an id (a whole number from 1)")


def _limit(raw: str) -> int:
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1000:
        return int(raw)
    raise argparse.ArgumentTypeError("must be a whole number from 1 to 1000")


def register(sub: Subparsers) -> None:
    hooks = sub.add_parser(
        "webhooks", help="webhook endpoints failing first, their deliveries, and retrying them"
    )
    actions = hooks.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="live endpoints, failing ones first")
    listed.add_argument("--limit", type=_limit, default=100, help="at most this many (100)")
    deliveries = actions.add_parser("deliveries", help="an endpoint's deliveries, newest first")
    deliveries.add_argument("endpoint_id", type=_positive_id, metavar="ENDPOINT_ID")
    deliveries.add_argument("--status", choices=operator.STATUSES, help="only those of it")
    deliveries.add_argument("--limit", type=_limit, default=50, help="at most this many (50)")
    attempts = actions.add_parser("attempts", help="every attempt of one delivery")
    attempts.add_argument("delivery_id", type=_positive_id, metavar="DELIVERY_ID")
    retry = actions.add_parser(
        "retry",
        help="set failed deliveries pending again, with a fresh retry window",
        description="Either --delivery ID (repeatable) or --endpoint ID --all-failed.",
    )
    retry.add_argument(
        "--delivery",
        type=_positive_id,
        action="append",
        default=[],
        metavar="ID",
        help="a failed delivery to retry (repeat for several)",
    )
    retry.add_argument("--endpoint", type=_positive_id, metavar="ID", help="with --all-failed")
    retry.add_argument(
        "--all-failed", action="store_true", help="every failed delivery of --endpoint"
    )
    hooks.set_defaults(func=cmd_webhooks)


def _usage(args: argparse.Namespace) -> None:
    """Exit 2 for a `retry` that names no deliveries, or names them two ways."""
    if args.action != "retry":
        return
    if args.delivery and (args.endpoint is not None or args.all_failed):
        exit_with(
            "webhooks",
            "retry takes --delivery, or --endpoint with --all-failed, not both",
            EXIT_REFUSED,
        )
    if not args.delivery and (args.endpoint is None or not args.all_failed):
        exit_with(
            "webhooks",
            "retry needs --delivery ID (repeatable), or --endpoint ID with --all-failed",
            EXIT_REFUSED,
        )


def cmd_webhooks(args: argparse.Namespace) -> int:
    """`settle webhooks list|deliveries|attempts|retry`; exit 1 for an unknown endpoint or
    delivery (nothing changed) or when Postgres cannot be reached, 2 for bad usage."""
    _usage(args)
    settings = load_settings("webhooks")
    by = operator_actions.require_acting(SYSTEM)
    window = operator.retry_window(settings.webhook_retry_hours)
    try:
        with reported("webhooks"), connect_once(settings, "webhooks") as conn:
            if args.action == "list":
                rows, total = operator.endpoints(conn, limit=args.limit)
                print("\n".join(_endpoint_table(rows)))
                print(f"settle webhooks: {len(rows)} of {total} live endpoint(s) shown")
            elif args.action == "deliveries":
                page = operator.deliveries(
                    conn, args.endpoint_id, status=args.status, limit=args.limit
                )
                print("\n".join(_delivery_table(page.items)))
                more = " (more: raise --limit)" if page.next_cursor else ""
                print(f"settle webhooks: {len(page.items)} delivery(ies) shown{more}")
            elif args.action == "attempts":
                found = operator.delivery(conn, args.delivery_id)
                print(
                    f"delivery {found['id']}: event {found['event_id']} ({found['event_type']})"
                    f" to endpoint {found['endpoint_id']}, {found['status']},"
                    f" {found['attempts']} attempt(s)"
                )
                print("\n".join(_attempt_table(found["attempts_made"])))
            elif args.delivery:
                retried = operator.retry_deliveries(conn, args.delivery, by=by, window=window)
                asked = sorted(set(args.delivery))
                left = [i for i in asked if i not in retried]
                print(f"settle webhooks: retried {len(retried)} of {len(asked)} delivery(ies)")
                if left:
                    print(
                        "settle webhooks: not failed (pending, delivered or cancelled), or of a"
                        f" deleted endpoint, so left as they are: {', '.join(map(str, left))}"
                    )
            else:
                count = operator.retry_failed(conn, args.endpoint, by=by, window=window)
                print(
                    f"settle webhooks: retried {count} failed delivery(ies) of endpoint"
                    f" {args.endpoint}"
                )
    except NotFound as exc:
        unchanged = "; nothing was changed" if args.action == "retry" else ""
        exit_with("webhooks", exc.message + unchanged, EXIT_FAILED)
    return 0


def _when(value: datetime.datetime | None) -> str:
    return "-" if value is None else format(value, TIME)


def _cut(text: object) -> str:
    shown = "" if text is None else " ".join(str(text).split())
    return shown if len(shown) <= ERROR_WIDTH else shown[: ERROR_WIDTH - 3] + "..."


def _endpoint_table(rows: list[Row]) -> list[str]:
    table = [("id", "url", "owner", "failed", "retrying", "pending", "last error", "last attempt")]
    for row in rows:
        code = row["last_status_code"]
        error = (f"HTTP {code} " if code is not None else "") + (row["last_error"] or "")
        table.append(
            (
                str(row["id"]),
                row["url"],
                "operators" if row["user_id"] is None else f"user {row['user_id']}",
                str(row["failed"]),
                str(row["retrying"]),
                str(row["pending"]),
                _cut(error),
                _when(row["last_attempt_at"]),
            )
        )
    return text_table(table, right=(3, 4, 5))


def _delivery_table(rows: list[Row]) -> list[str]:
    table = [("id", "event", "type", "status", "attempts", "last code", "last error", "made")]
    for row in rows:
        code = row["last_status_code"]
        table.append(
            (
                str(row["id"]),
                str(row["event_id"]),
                row["event_type"],
                row["status"],
                str(row["attempts"]),
                "-" if code is None else str(code),
                _cut(row["last_error"]),
                _when(row["created_at"]),
            )
        )
    return text_table(table, right=(4,))


def _attempt_table(rows: list[Row]) -> list[str]:
    table = [("#", "when", "code", "latency ms", "error")]
    for n, row in enumerate(rows, 1):
        code = row["status_code"]
        table.append(
            (
                str(n),
                _when(row["attempted_at"]),
                "-" if code is None else str(code),
                str(row["latency_ms"]),
                _cut(row["error"]),
            )
        )
    return text_table(table, right=(0, 3))
