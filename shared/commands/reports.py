"""`settle audit`, `settle status` and `settle audit-log`: what the ledger, the service and
its operators look like, from a terminal."""

from __future__ import annotations

import argparse

from shared.commands import Subparsers
from shared.commands.failures import reported
from shared.db.pool import connect_once
from shared.ledger.audit import DEFAULT_PENDING_THRESHOLD, audit
from shared.runtime.boot import load_settings


def register(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="check the ledger invariants; exit 1 on any violation")
    audit.add_argument(
        "--pending-threshold",
        type=float,
        default=DEFAULT_PENDING_THRESHOLD,
        metavar="SECONDS",
        help="report transfers pending longer than this (default %(default)g)",
    )
    audit.set_defaults(func=cmd_audit)
    status = sub.add_parser(
        "status",
        help="queues, transfers, processes and connections at a glance;"
        " exit 1 when something needs attention",
    )
    status.add_argument(
        "--pending-threshold",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a transfer pending longer than this needs attention (default: the dashboard's,"
        " DASHBOARD_PENDING_THRESHOLD_SECONDS)",
    )
    status.set_defaults(func=cmd_status)
    log = sub.add_parser(
        "audit-log",
        help="what operators did (dashboard, settle dead-letters): who, what, which transfers",
    )
    log.add_argument("--limit", type=int, default=50, help="actions shown (default %(default)s)")
    log.add_argument("--transfer", type=int, metavar="ID", help="only actions on this transfer")
    log.set_defaults(func=cmd_audit_log)


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the ledger invariants over the whole database and print a report; exit 1 on
    any violation, or when Postgres cannot be read."""
    settings = load_settings("audit")
    with reported("audit", "cannot read the ledger"), connect_once(settings, "audit") as conn:
        report = audit(conn, pending_older_than_seconds=args.pending_threshold)
    print("\n".join(report.lines()))
    if report.violations:
        print(f"settle audit: {len(report.violations)} violation(s)")
        return 1
    print(f"settle audit: ok (no violation; pending threshold {args.pending_threshold:g}s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the overview; exit 1 when something needs attention or Postgres or the broker
    cannot be read."""
    from shared.broker.factory import create_broker
    from shared.runtime.status import gather

    settings = load_settings("status")
    broker = create_broker(
        settings.message_broker_url, namespace=settings.broker_namespace, middleware=[]
    )
    try:
        with (
            reported("status", "cannot read Postgres", "cannot read the broker"),
            connect_once(settings, "status", timeouts=True) as conn,
        ):
            status = gather(settings, conn, broker.depths, pending_threshold=args.pending_threshold)
    finally:
        broker.close()
    print("\n".join(status.lines()))
    if status.attention:
        print(f"settle status: {len(status.attention)} thing(s) need attention")
        return 1
    print("settle status: ok")
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    """Print the operator action record, newest first; exit 1 when Postgres cannot be read."""
    from shared.ledger.operator_actions import recent

    settings = load_settings("audit-log")
    with (
        reported("audit-log", "cannot read the record"),
        connect_once(settings, "audit-log") as conn,
    ):
        rows = recent(conn, limit=args.limit, transfer_id=args.transfer)
    for row in rows:
        if row["key_id"] is None:  # `settle dead-letters|webhooks`, run with the URLs
            who = "the command line"
        else:
            who = f"key {row['key_id']}" + (f" ({row['key_label']})" if row["key_label"] else "")
        if row["webhook_endpoint_id"] is not None:
            ids = row["webhook_delivery_ids"]
            subject = f"{len(ids)} delivery(ies) of webhook endpoint {row['webhook_endpoint_id']}"
        else:
            ids = row["transfer_ids"]
            subject = f"{len(ids)} transfer(s)"
        print(
            f"{row['created_at']:%Y-%m-%d %H:%M:%S%z}  {who}  {row['action']}"
            f" {subject}: {_few(ids)}  -- {row['detail']}"
        )
    print(f"settle audit-log: {len(rows)} action(s) shown")
    return 0


def _few(ids: list[int]) -> str:
    """The first ten of `ids`, and how many more."""
    return ", ".join(str(i) for i in ids[:10]) + (
        f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    )
