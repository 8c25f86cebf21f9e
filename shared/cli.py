"""`settle`: the command line of the service.

The parser is built here, in one place. `settle web|worker|sweeper|dead-letters` are provided
by the packages that implement them, found through the `settle.commands` entry points this
distribution declares (pyproject.toml), so that shared/ never imports web or worker; each is
a function called with the arguments after its name, and the first line of its docstring is
its help. The other commands live in `shared.commands`, one module per group.
Exit codes: 0 done, 1 a dependency is unreachable or a step failed, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import EntryPoint, entry_points

from shared.commands import database, keys, reports, run, webhooks

#: The entry-point group of the commands other packages provide.
COMMANDS_GROUP = "settle.commands"

#: The groups of commands implemented in shared/, in the order `settle --help` lists them.
GROUPS = (run, database, keys, reports, webhooks)

HELP = ("-h", "--help")


def provided_commands() -> dict[str, EntryPoint]:
    """The commands other packages of the distribution provide, by name."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def summary(entry: EntryPoint) -> str:
    """The first line of the docstring of the function `entry` names. Loading it imports
    its package (web, worker): done only for `settle --help`, not for every command."""
    line = (entry.load().__doc__ or "").strip().split("\n\n", 1)[0].replace("\n", " ")
    return line[:1].lower() + line[1:].rstrip(".")


def parser(provided: dict[str, EntryPoint], *, describe: bool) -> argparse.ArgumentParser:
    """The `settle` parser: each command with its one-line help (a provided command's only
    when `describe`, for `settle --help`)."""
    parser = argparse.ArgumentParser(prog="settle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    for name, entry in sorted(provided.items()):
        sub.add_parser(name, help=summary(entry) if describe else None)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    provided = provided_commands()
    if argv and argv[0] in provided:
        provided[argv[0]].load()(argv[1:])
        return
    describe = not argv or argv[0] in HELP
    args = parser(provided, describe=describe).parse_args(argv)
    raise SystemExit(args.func(args))
