"""How a Settle process ends: its exit codes, and the one line that says why.

0 done or stopped on request; 1 a step failed or a dependency is unreachable (one-shot
commands); 2 a bad setting or a plan that does not fit. A child of a supervisor that fails
at boot exits 2 (refused) or 3 (a dependency is unreachable): dramatiq reports a worker
process killed by a signal as exit 1, so 1 cannot also mean "failed at boot" (3 is
dramatiq's own code for a broker connection that failed at boot).
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

EXIT_OK = 0
#: A step failed, or a dependency is unreachable.
EXIT_FAILED = 1
#: A bad setting, or a connection plan that does not fit: restarting cannot help.
EXIT_REFUSED = 2
#: A supervised child could not reach a dependency at boot (see above).
EXIT_UNREACHABLE = 3


def exit_with(role: str, message: str, code: int) -> NoReturn:
    """End the process with one line, `settle <role>: <message>`, on stderr and `code`."""
    print(f"settle {role}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def describe_exit(code: int) -> str:
    """`exit 3`, or `killed by SIGKILL` for a negative code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
