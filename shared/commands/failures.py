"""How a command reports a server it depends on failing: one line and exit 1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from shared.errors import BrokerUnavailable, first_line
from shared.runtime.exits import EXIT_FAILED, exit_with


@contextlib.contextmanager
def reported(
    command: str, postgres: str = "cannot reach Postgres", broker: str = "the broker failed"
) -> Iterator[None]:
    """Run the `with` body; a Postgres error ends `settle <command>` with one line on stderr,
    `settle <command>: <postgres>: <the error's first line>`, and exit 1, and so does a
    broker that cannot be reached (`BrokerUnavailable`), with `broker` in that place."""
    try:
        yield
    except psycopg.Error as exc:
        exit_with(command, f"{postgres}: {first_line(exc)}", EXIT_FAILED)
    except BrokerUnavailable as exc:
        exit_with(command, f"{broker}: {exc.message}", EXIT_FAILED)
