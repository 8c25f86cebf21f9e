"""Configuration, the ground floor of the import graph: every setting declared once
(`settings`), the declaring, parsing and documenting of a setting (`spec`), and which broker
a URL names (`brokers`). Imports nothing of Settle but `shared.errors`.

`python -m shared.config` prints the settings table of docs/configuration.md;
`make docs-settings` writes it there.
"""

from shared.config.settings import Settings

__all__ = ["Settings"]
