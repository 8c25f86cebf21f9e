"""The dramatiq CLI's entry: `python -m worker.dramatiq_cli worker.dramatiq_entry:boot ...`.

The composition root of each dramatiq worker process: dramatiq calls `boot()` in the
process it forked, before importing the actor module, and then consumes from
`dramatiq.get_broker()`: the one reason `boot` installs the broker as dramatiq's global
(`worker.actors.install`). A malformed setting ends the process with one line and exit 2, which
`settle worker` takes for a failure at boot.
"""

from __future__ import annotations

from shared.runtime.boot import load_settings
from worker import actors


def boot() -> None:
    """A process that settles transfers (the transfers queue)."""
    actors.install(load_settings("worker"))


def boot_webhooks() -> None:
    """A process that delivers webhooks (the webhooks queue), with the webhooks' share of
    the connection budget."""
    actors.install(load_settings("worker"), role="webhooks")
