"""Running the `settle` command as the tests do. Scratch databases and vhosts are in
`shared.testing.scratch`, shared with bench/."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTLE = Path(sys.executable).with_name("settle")


def settle(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `settle <args>` with `env` to completion; stdout and stderr are captured together."""
    return subprocess.run(
        [str(SETTLE), *args],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
