"""The name of the queue transfers travel on, in a module of its own: the worker supervisor
passes it to dramatiq and tools read the broker's keys by it, without importing the actors
(which need the broker installed first)."""

from __future__ import annotations

#: The queue the settle actor consumes and web sends to.
TRANSFER_QUEUE = "transfers"
