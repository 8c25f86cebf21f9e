"""`python -m worker.dramatiq_cli ARGS`: dramatiq's own command line, logging Settle's way.

Dramatiq's CLI formats its own lines and pipes its worker processes' lines through itself.
Here the root logger gets Settle's handler first (JSON or text, as LOG_FORMAT says; `settle
worker` resolves `auto` against its own stderr and passes the answer down), and dramatiq is
told to leave logging alone (`--skip-logging`): its master and the worker processes it
forks write through that handler, one line per record.
"""

from __future__ import annotations

import sys

import dramatiq.cli

from shared.config import Settings
from shared.runtime import logs


def main() -> None:
    logs.configure("worker", str(Settings.one("log_format")))
    if "--skip-logging" not in sys.argv:
        sys.argv.append("--skip-logging")
    raise SystemExit(dramatiq.cli.main())


if __name__ == "__main__":
    main()
