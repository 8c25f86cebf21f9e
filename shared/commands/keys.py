"""`settle keys create|list|update|revoke`: API keys, and their own rate limits, from a
terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from shared.commands import Subparsers
from shared.commands.failures import reported
from shared.db.pool import connect_once
from shared.errors import NotFound
from shared.ledger import auth
from shared.ratelimit.limits import parse_burst, parse_rate
from shared.runtime.boot import load_settings
from shared.runtime.exits import EXIT_FAILED, EXIT_REFUSED, exit_with
from shared.text_table import text_table

TIME = "%Y-%m-%d %H:%M:%S%z"


def register(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="create, list, update (rate limits) or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once)")
    holder = create.add_mutually_exclusive_group(required=True)
    holder.add_argument("--user", type=int, metavar="ID", help="a key acting for this user")
    holder.add_argument(
        "--operator", action="store_true", help="an operator key: it may do everything"
    )
    create.add_argument(
        "--read-only",
        action="store_true",
        help="with --operator: a key that sees everything and changes nothing",
    )
    create.add_argument("--label", default="", help="a note shown by `settle keys list`")
    _add_limit_options(create, default=None)
    actions.add_parser("list", help="list keys (never their secrets)")
    update = actions.add_parser("update", help="change a key's own rate limit")
    update.add_argument("key_id", type=int, metavar="KEY_ID")
    _add_limit_options(update, default=UNSET)
    revoke = actions.add_parser("revoke", help="revoke a key; it is refused from now on")
    revoke.add_argument("key_id", type=int, metavar="KEY_ID")
    keys.set_defaults(func=cmd_keys)


#: `settle keys update`: an option not given (its value stays).
UNSET = object()


def _limit_option(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a `shared.ratelimit.limits` parser: its `ValueError` becomes
    argparse's one-line usage error (exit 2, before anything is read or written)."""

    def parsed(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def _add_limit_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--rate",
        type=_limit_option(parse_rate),
        default=default,
        metavar="PER_SECOND",
        help="this key's own rate limit in requests per second (0.001 to 1000000, decimals"
        " allowed), instead of RATE_LIMIT_PER_SECOND; `default` goes back to it",
    )
    parser.add_argument(
        "--burst",
        type=_limit_option(parse_burst),
        default=default,
        metavar="REQUESTS",
        help="this key's own burst (1 to 1000000 requests at once), instead of"
        " RATE_LIMIT_BURST; `default` goes back to it",
    )


def cmd_keys(args: argparse.Namespace) -> int:
    """`settle keys create|list|update|revoke`. A new key goes alone to stdout (it is shown
    only this once); exit 1 for an unknown user or key id, or when Postgres cannot be
    reached; 2 for bad usage (a rate or burst out of bounds included: argparse refuses it
    before anything is read or written)."""
    if args.action == "create" and args.read_only and not args.operator:
        exit_with("keys", "--read-only needs --operator", EXIT_REFUSED)
    if args.action == "update" and args.rate is UNSET and args.burst is UNSET:
        exit_with("keys update", "give --rate and/or --burst", EXIT_REFUSED)
    settings = load_settings("keys")
    try:
        with reported("keys"), connect_once(settings, "keys") as conn:
            if args.action == "create":
                created = auth.create_key(
                    conn,
                    user_id=args.user,
                    label=args.label,
                    read_only=args.read_only,
                    rate=args.rate,
                    burst=args.burst,
                )
                print(
                    f"settle keys: created key {created.id}"
                    f" ({_holder(created.user_id, created.read_only)},"
                    f" {_limit_text(args.rate, args.burst)}); store it now,"
                    " it is not shown again",
                    file=sys.stderr,
                )
                print(created.key)
            elif args.action == "update":
                changes = {
                    name: value
                    for name, value in (("rate", args.rate), ("burst", args.burst))
                    if value is not UNSET
                }
                row = auth.set_key_limits(conn, args.key_id, **changes)
                print(
                    f"settle keys: key {args.key_id} now has"
                    f" {_limit_text(row['rate_per_second'], row['rate_burst'])}"
                    " (every web process applies it within a second)"
                )
            elif args.action == "revoke":
                done = auth.revoke_key(conn, args.key_id)
                state = "revoked" if done else "was already revoked"
                print(f"settle keys: key {args.key_id} {state}")
            else:
                print("\n".join(_key_table(auth.list_keys(conn))))
    except NotFound as exc:
        exit_with("keys", exc.message, EXIT_FAILED)
    return 0


def _limit_text(rate: object, burst: object) -> str:
    """A key's own rate limit as `settle keys` prints it."""
    if rate is None and burst is None:
        return "the default rate limit"
    shown_rate = "the default rate" if rate is None else f"{rate:g}/s"
    shown_burst = "the default burst" if burst is None else f"burst {burst}"
    return f"rate limit {shown_rate}, {shown_burst}"


def _holder(user_id: object, read_only: object) -> str:
    if user_id is not None:
        return f"user {user_id}"
    return "operator (read-only)" if read_only else "operator"


def _key_table(keys: list[dict[str, object]]) -> list[str]:
    rows = [("id", "holder", "label", "key", "rate", "burst", "created", "revoked")]
    for key in keys:
        revoked = key["revoked_at"]
        rows.append(
            (
                str(key["id"]),
                _holder(key["user_id"], key["read_only"]),
                str(key["label"]),
                f"{key['key_prefix']}...",
                "default" if key["rate_per_second"] is None else f"{key['rate_per_second']:g}/s",
                "default" if key["rate_burst"] is None else str(key["rate_burst"]),
                format(key["created_at"], TIME),
                "" if revoked is None else format(revoked, TIME),
            )
        )
    return text_table(rows)
