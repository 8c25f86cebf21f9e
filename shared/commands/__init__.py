"""The `settle` commands implemented in shared/, one module per group of commands.

Each module has `register(sub)`, which adds its commands to the `settle` parser (built in
one place, `shared.cli`), each with a one-line help and the function that runs it: a
function of the parsed arguments returning the exit code. A new group is a new module here
and one line in `shared.cli.GROUPS`.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

#: What each group's `register` adds its commands to (`ArgumentParser.add_subparsers()`).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
