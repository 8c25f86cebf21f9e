"""Log lines: one JSON object per line off a terminal, human text on one.

`configure(role, fmt)` installs one handler on the root logger. `fmt` is `json`, `text` or
`auto` (json unless the stream is a terminal); `resolve_format` turns `auto` into one of the
other two, so that a process root can pass its decision down to children whose stderr is a
pipe (dramatiq's worker processes) rather than let each guess again.

Every line carries the time, level, role, pid, logger, the event (the message) and, when
known, `request_id` and `transfer_id`: `bind(...)` sets them in ContextVars for the current
request or message, and every line logged meanwhile by that thread carries them.

Waitress warns `Task queue depth is N` for every request that waits for a thread; under load
that is thousands of lines a second, and even a filter that drops them pays for building
each record (the caller's frame is looked up first). So `configure` raises the
`waitress.queue` logger to ERROR, which waitress's call skips at once; the depth is read once
a second instead (`shared.runtime.metrics.QueueDepth`: the `settle_web_queue_depth` gauge,
and at most one warning line a minute while requests wait).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

FORMATS = ("auto", "json", "text")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
transfer_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "transfer_id", default=None
)


@contextlib.contextmanager
def bind(*, request: str | None = None, transfer: int | None = None) -> Iterator[None]:
    """Lines logged inside the block carry these ids (only the ones given are changed)."""
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if transfer is not None:
        tokens.append((transfer_id, transfer_id.set(transfer)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def resolve_format(fmt: str | None, stream: TextIO | None = None) -> str:
    """`json` or `text`: `auto` (or None, or anything unknown) means text on a terminal."""
    if fmt in ("json", "text"):
        return fmt
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or foreign stream: not a terminal
        return "json"


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    rid = getattr(record, "request_id", None) or request_id.get()
    tid = getattr(record, "transfer_id", None) or transfer_id.get()
    if rid is not None:
        ids["request_id"] = rid
    if tid is not None:
        ids["transfer_id"] = tid
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks go in `exc`, escaped)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "role": self._role,
            "pid": record.process,
            "logger": record.name,
            "event": record.getMessage(),
            **_ids(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time role[pid] LEVEL logger: event [request_id=... transfer_id=...]`."""

    def __init__(self, role: str) -> None:
        super().__init__(fmt=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = _ids(record)
        if not ids:
            return text
        first, newline, rest = text.partition("\n")
        tags = " ".join(f"{key}={value}" for key, value in ids.items())
        return f"{first} [{tags}]{newline}{rest}"


def formatter(role: str, fmt: str) -> logging.Formatter:
    """The formatter for `fmt` (`json` or `text`)."""
    return JsonFormatter(role) if fmt == "json" else TextFormatter(role)


def configure(role: str, fmt: str | None = "auto", *, stream: TextIO | None = None) -> str:
    """Log INFO and above from every logger to `stream` (default stderr) in `fmt`; returns
    the format chosen (`json` or `text`). Replaces handlers installed before (dramatiq's)."""
    stream = sys.stderr if stream is None else stream
    chosen = resolve_format(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(role, chosen))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return chosen
