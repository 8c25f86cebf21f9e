from __future__ import annotations

import pytest

from shared.errors import first_line


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            RuntimeError("connection refused\nIs the server running on that host?"),
            "connection refused",
        ),
        (RuntimeError("  \n  padded first line  \nsecond"), "padded first line"),
        (ValueError(""), "ValueError"),
        (TimeoutError("   "), "TimeoutError"),
    ],
)
def test_first_line_is_the_first_line_of_the_message_or_the_class_name(
    exc: BaseException, line: str
) -> None:
    assert first_line(exc) == line
