"""prometheus-client's multiprocess mode, set up once by each process root.

Web and worker processes are forked, and a scrape reaches one of them, so every process
writes its series to memory-mapped files of its own and the scraped process adds them up.
prometheus-client decides whether to write files when it is first imported, from
PROMETHEUS_MULTIPROC_DIR; so the root of each process tree (`settle web`, `settle worker`)
calls `prepare` before anything imports it, and its children inherit the variable.

Layout: METRICS_DIR holds one folder per role (`web/`, `worker/`). Every process of one
service must agree on it, so its default is named after what they share, the database and
the broker (`Settings.metrics_path`), never after PORT; `settle run` gives each run a folder
of its own. `prepare` empties its role's folder: files left by a previous run would
otherwise be added to this one's counts. A scrape merges every role's
folder, so the web's `/metrics` also serves the series of the worker processes on its host.
Gauges of processes that exited are dropped (`process_exited` for a child the root reaped,
`forget_dead` for any pid no longer alive); their counters stay, so totals never go back.

Nothing here imports prometheus-client at module level: it must not be imported before
`prepare` has run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys

from shared.config import Settings

#: prometheus-client's own variable, not a setting: `prepare` sets it for this process and
#: the children it starts, and the rest of this module reads it back as that process state.
ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID = re.compile(r"_(\d+)\.db$")


def prepare(settings: Settings, role: str) -> str:
    """Point this process (and the children it will start) at `role`'s folder, emptied.
    Returns the folder. Raises RuntimeError when prometheus-client was imported first (its
    series would stay in this process only)."""
    path = os.path.join(settings.metrics_path, role)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != path:
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set")
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
    os.environ[ENV] = path
    return path


def enabled() -> bool:
    """Whether this process writes its series to files (a root called `prepare`)."""
    return bool(os.environ.get(ENV))


def root() -> str | None:
    """The folder that holds every role's folder, when files are used."""
    path = os.environ.get(ENV)
    return os.path.dirname(path.rstrip(os.sep)) if path else None


def files() -> list[str]:
    """Every role's metric files under `root()`."""
    top = root()
    return sorted(glob.glob(os.path.join(top, "*", "*.db"))) if top else []


def process_exited(pid: int) -> None:
    """Drop the live gauges of a child that exited (its counters are kept)."""
    path = os.environ.get(ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def forget_dead() -> None:
    """Drop the live gauges of every process, of any role, that no longer runs (killed
    processes that no parent reaped, a dramatiq worker set that was restarted)."""
    from prometheus_client import multiprocess

    for name in files():
        base = os.path.basename(name)
        match = _PID.search(base)
        if not base.startswith("gauge_live") or match is None:
            continue
        pid = int(match.group(1))
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, os.path.dirname(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
