"""`python -m shared.config`: print the settings table of docs/configuration.md, generated
from the declarations; with `--write PAGE`, replace the table in PAGE by it instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.config.settings import Settings
from shared.config.spec import markdown_table, replace_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.config", description=__doc__)
    parser.add_argument("--write", metavar="PAGE", type=Path, help="a markdown page to update")
    args = parser.parse_args(argv)
    table = markdown_table(Settings)
    if args.write is None:
        sys.stdout.write(table)
        return 0
    page: Path = args.write
    page.write_text(replace_table(page.read_text(encoding="utf-8"), table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
