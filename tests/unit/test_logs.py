"""Log records cannot be forged: whatever a field holds (a request path, an error from a
driver, a traceback), a text record is exactly one line and a JSON record one line that line
splitters (Python's `splitlines`, honcho, log shippers) do not break."""

from __future__ import annotations

import json
import logging
import sys
import unicodedata

import pytest

from shared.runtime import logs

#: Every character `str.splitlines` breaks a line at, and other controls a terminal obeys.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
CONTROLS = "\x00\x07\x08\x1b\x7f\x9b"
FORGED = "2024-01-01 00:00:00,000 web[1] INFO web.auth: operator key 1 logged in"


def _record(message: str, *, name: str = "web.errors") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, "%s -> refused", (message,), None)


def _unsafe(text: str) -> list[str]:
    """Characters of `text` that break a line or drive a terminal."""
    return [c for c in text if unicodedata.category(c) == "Cc" or c in "\u2028\u2029"]


@pytest.mark.parametrize("char", LINE_BREAKS + CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_record_is_one_line_whatever_its_message_holds(fmt: str, char: str) -> None:
    message = f"GET /users/1{char}{FORGED}{char}"
    line = logs.formatter("web", fmt).format(_record(message))
    assert line.splitlines() == [line]
    assert _unsafe(line) == []
    if fmt == "json":
        assert json.loads(line)["event"] == f"{message} -> refused"  # escaped, not lost


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_field_is_escaped_ids_logger_and_traceback_included(fmt: str) -> None:
    record = _record("plain", name=f"web{LINE_BREAKS}x")
    try:
        raise ValueError(f"boom{LINE_BREAKS}{FORGED}")
    except ValueError:
        record.exc_info = sys.exc_info()
    with logs.bind(request=f"r{LINE_BREAKS}1"):
        line = logs.formatter("web", fmt).format(record)
    assert line.splitlines() == [line]
    assert _unsafe(line) == []
    assert "ValueError: boom" in line and "Traceback" in line


def test_text_escapes_read_back_unambiguously() -> None:
    """A backslash is escaped too, so a real line feed and the two characters `\\n` that a
    client sent look different."""
    real = logs.formatter("web", "text").format(_record("a\nb"))
    typed = logs.formatter("web", "text").format(_record("a\\nb"))
    assert real != typed
    assert r"a\nb -> refused" in real and r"a\\nb -> refused" in typed
    nel = logs.formatter("web", "text").format(_record("a\x85b\u2028c"))
    assert r"a\x85b\u2028c" in nel


def test_text_keeps_printable_unicode_as_it_is() -> None:
    line = logs.formatter("web", "text").format(_record("Zoë 東京 €"))
    assert "Zoë 東京 € -> refused" in line
    parsed = json.loads(logs.formatter("web", "json").format(_record("Zoë 東京 €")))
    assert parsed["event"] == "Zoë 東京 € -> refused"
