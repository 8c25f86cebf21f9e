"""Plain-text tables for the terminal: `settle budget`, `settle status`, `settle keys list`."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(rows: Sequence[Sequence[str]], *, right: Collection[int] = ()) -> list[str]:
    """`rows` (the header first) as lines of columns two spaces apart, each column as wide
    as its widest cell: left-aligned, but for the column indexes in `right` (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
