"""A rate limit (`Limit`: requests per second and burst), the bounds every way of setting one
shares (RATE_LIMIT_PER_SECOND / RATE_LIMIT_BURST, `settle keys --rate/--burst`, the columns
of `api_keys`), and the parsing of what an operator types. Parsing raises `ValueError` with a
message fit to show as it is."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.config.settings import MAX_BURST, MAX_RATE, MIN_RATE

__all__ = ["MAX_BURST", "MAX_RATE", "MIN_RATE", "Limit", "parse_burst", "parse_rate"]

# The slowest and fastest rate a key may have are one request every ~17 minutes and a
# million a second (which no web process reaches: "practically unlimited"); the largest
# burst a million requests at once.

#: What `settle keys update --rate/--burst` takes to drop a key's own value.
DEFAULT = "default"


@dataclass(frozen=True)
class Limit:
    """A token bucket: `burst` requests at once from a full bucket, refilled at `rate` per
    second. `name` is the policy's name in the RateLimit headers: "default" for the
    settings', "key" when the key has a value of its own."""

    rate: float
    burst: int
    name: str = "default"

    @property
    def interval_us(self) -> int:
        """Microseconds between two tokens (at least 1), rounded so that the rate enforced is
        never above `rate`: integer arithmetic keeps the bucket exact in Redis's Lua and here."""
        return max(1, math.ceil(1_000_000 / self.rate))

    @property
    def window(self) -> int:
        """Seconds in which a full bucket's `burst` requests are earned back (at least 1,
        rounded up): the `w` of `RateLimit-Policy`, with `q` the burst, so that a client
        pacing itself at q per w is never limited."""
        return max(1, math.ceil(self.burst / self.rate))

    def share(self, parts: int) -> Limit:
        """This limit split between `parts` buckets that do not see each other: the rate
        divided, and the burst (at least 1 each)."""
        if parts <= 1:
            return self
        return Limit(self.rate / parts, max(1, self.burst // parts), self.name)


def check_rate(value: float, what: str) -> float:
    """`value` when it is a rate a key may have; raises `ValueError` naming `what`."""
    if not math.isfinite(value) or not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(
            f"{what} must be between {MIN_RATE:g} and {MAX_RATE:,.0f} requests per second,"
            f" not {value:g}"
        )
    return value


def check_burst(value: int, what: str) -> int:
    """`value` when it is a burst a key may have; raises `ValueError` naming `what`."""
    if not 1 <= value <= MAX_BURST:
        raise ValueError(f"{what} must be a whole number from 1 to {MAX_BURST:,}, not {value}")
    return value


def parse_rate(text: str, what: str = "--rate") -> float | None:
    """A rate typed by an operator (`2.5`, `100`); None for `default`. Raises `ValueError`."""
    raw = text.strip()
    if raw.lower() == DEFAULT:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{what} takes requests per second (a number such as 10 or 0.5) or"
            f" {DEFAULT!r}, not {text!r}"
        ) from None
    return check_rate(value, what)


def parse_burst(text: str, what: str = "--burst") -> int | None:
    """A burst typed by an operator (`200`); None for `default`. Raises `ValueError`."""
    raw = text.strip()
    if raw.lower() == DEFAULT:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{what} takes a whole number of requests (such as 200) or {DEFAULT!r}, not {text!r}"
        ) from None
    return check_burst(value, what)
