"""`settle keys create|list|revoke`: API keys from a terminal."""

from __future__ import annotations

import argparse
import sys

from shared.commands import Subparsers
from shared.commands.failures import reported
from shared.db.pool import connect_once
from shared.errors import NotFound
from shared.ledger import auth
from shared.runtime.lifecycle import EXIT_FAILED, EXIT_REFUSED, exit_with, load_settings
from shared.text_table import text_table

TIME = "%Y-%m-%d %H:%M:%S%z"


def register(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="create, list or revoke API keys")
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
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key; it is refused from now on")
    revoke.add_argument("key_id", type=int, metavar="KEY_ID")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """`settle keys create|list|revoke`. A new key goes alone to stdout (it is shown only this
    once); exit 1 for an unknown user or key id, or when Postgres cannot be reached."""
    if args.action == "create" and args.read_only and not args.operator:
        exit_with("keys", "--read-only needs --operator", EXIT_REFUSED)
    settings = load_settings("keys")
    try:
        with reported("keys"), connect_once(settings, "keys") as conn:
            if args.action == "create":
                created = auth.create_key(
                    conn, user_id=args.user, label=args.label, read_only=args.read_only
                )
                print(
                    f"settle keys: created key {created.id}"
                    f" ({_holder(created.user_id, created.read_only)}); store it now,"
                    " it is not shown again",
                    file=sys.stderr,
                )
                print(created.key)
            elif args.action == "revoke":
                done = auth.revoke_key(conn, args.key_id)
                state = "revoked" if done else "was already revoked"
                print(f"settle keys: key {args.key_id} {state}")
            else:
                print("\n".join(_key_table(auth.list_keys(conn))))
    except NotFound as exc:
        exit_with("keys", exc.message, EXIT_FAILED)
    return 0


def _holder(user_id: object, read_only: object) -> str:
    if user_id is not None:
        return f"user {user_id}"
    return "operator (read-only)" if read_only else "operator"


def _key_table(keys: list[dict[str, object]]) -> list[str]:
    rows = [("id", "holder", "label", "key", "created", "revoked")]
    for key in keys:
        revoked = key["revoked_at"]
        rows.append(
            (
                str(key["id"]),
                _holder(key["user_id"], key["read_only"]),
                str(key["label"]),
                f"{key['key_prefix']}...",
                format(key["created_at"], TIME),
                "" if revoked is None else format(revoked, TIME),
            )
        )
    return text_table(rows)
