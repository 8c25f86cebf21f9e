"""Log lines: one JSON object per line off a terminal, human text on one.

`configure(role, fmt)` installs one handler on the root logger. `fmt` is `json`, `text` or
`auto` (json unless the stream is a terminal); `resolve_format` turns `auto` into one of the
other two, so that a process root can pass its decision down to children whose stderr is a
pipe (dramatiq's worker processes) rather than let each guess again.

Every line carries the time, level, role, pid, logger, the event (the message) and, when
known, `request_id` and `transfer_id`. A record is always exactly one line: every field is
escaped (control characters, NEL, U+2028 and U+2029; tracebacks too), so that a value a
client chose, such as a request path with an encoded line feed, cannot forge a line.
`bind(...)` sets the ids in ContextVars for the current request or message, and every line
logged meanwhile by that thread carries them.

`configure` raises the `waitress.queue` logger to ERROR: waitress warns `Task queue depth is
N` for every request that waits for a thread, and the depth is read once a second instead
(`shared.runtime.metrics.QueueDepth`: a gauge, and at most one warning line a minute while
requests wait; docs/decisions/quiet-waitress-queue-warning.md).
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


#: Characters no log field may write as they are: C0 and C1 controls and DEL (line breaks,
#: NEL, terminal escapes) and the Unicode line and paragraph separators. Each would let a
#: value a client chose (a request path, an error echoing input) end a record early, forge
#: one, or drive a terminal; line-oriented readers (honcho, shippers) split at any of them.
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
#: Text records: the usual escapes, `\xNN` or `\uNNNN` for the rest, and the backslash itself
#: (so that a line feed and the two characters a client typed read differently).
_TEXT_ESCAPES = {
    **{c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("\\"): "\\\\",
}
#: JSON records: the json module escapes C0 controls itself; these are the rest.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x7F}


def escape(text: str) -> str:
    """`text` with every character that could break a text log line escaped (see
    `_TEXT_ESCAPES`): the result is one line, and reads back unambiguously."""
    return text.translate(_TEXT_ESCAPES)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback and stack, as `logging.Formatter.format` would append them."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [record.exc_text or ""]
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(p for p in parts if p)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: tracebacks go in `exc`, and every character
    that a line splitter might break at is escaped (JSON's `\\uNNNN`, so it reads back as it
    was)."""

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
        exc = _exception_text(self, record)
        if exc:
            line["exc"] = exc
        # ensure_ascii=False keeps names and messages readable; the json module leaves NEL,
        # the other C1 controls, DEL, U+2028 and U+2029 raw, so they are escaped here (they
        # can only occur inside strings, where an escape is what they mean).
        return json.dumps(line, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)


class TextFormatter(logging.Formatter):
    """`time role[pid] LEVEL logger: event [request_id=... transfer_id=...] | traceback`,
    always one line: every field is escaped (`escape`), the traceback's line breaks too."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {self._role}[{record.process}] {record.levelname}"
            f" {escape(record.name)}: {escape(record.getMessage())}"
        )
        ids = _ids(record)
        if ids:
            line += " [" + " ".join(f"{k}={escape(str(v))}" for k, v in ids.items()) + "]"
        exc = _exception_text(self, record)
        if exc:
            line += " | " + escape(exc)
        return line


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
