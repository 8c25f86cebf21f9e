"""The dashboard's HTML: Jinja2 templates (in `templates/`, beside this module) with
autoescaping on, the filters they use, and the geometry of the SVG charts.

A handler gathers plain data and calls `render`; every value a template prints is escaped,
so no Python code builds markup. The pages hold no script, no inline style and no event
handler, and load only the stylesheet the app serves itself (`static/dashboard.css`): the
pages' Content-Security-Policy (`web.dashboard.headers`) refuses anything else, and they
work offline and on a phone.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2

from shared.ledger.currencies import format_amount


def query(params: Mapping[str, object]) -> str:
    """`?a=1&b=2` of the non-empty `params`, or the empty string."""
    kept = {k: str(v) for k, v in params.items() if v is not None and str(v) != ""}
    return "?" + urlencode(kept) if kept else ""


def age(seconds: float | None) -> str:
    """`45s`, `12m`, `3h 20m`, `2d 4h`."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(value: datetime.datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z")


def money(amount: int, currency: str) -> str:
    """Minor units as a person reads them, with the currency's own decimals: `1,234.56 EUR`,
    `1,250 JPY`, `1.250 BHD` (`shared.ledger.currencies.format_amount`)."""
    return format_amount(amount, currency)


@dataclass(frozen=True)
class Bar:
    """One rectangle of a chart, in the chart's own coordinates; `value` is its tooltip."""

    x: float
    y: float
    width: float
    height: float
    kind: str  # "a" (the first colour) or "b" (stacked on top, the second)
    value: object


@dataclass(frozen=True)
class BarChart:
    title: str
    caption: str  # the peak, or that there was nothing
    width: int
    height: int
    bars: list[Bar]


def chart(
    values: Sequence[float | None],
    *,
    title: str,
    unit: str,
    width: int = 600,
    height: int = 120,
    stacked: Sequence[float] | None = None,
) -> BarChart:
    """The bars of a chart of `values` (one bar each, oldest left), with `stacked` drawn on
    top in the second colour (e.g. failed over settled); the `bar_chart` macro of
    `templates/macros.html` draws it as SVG."""
    n = max(len(values), 1)
    totals = [(v or 0) + ((stacked[i] if stacked else 0) or 0) for i, v in enumerate(values)]
    top = max(totals + [0.0]) or 1.0
    step = width / n
    bar_width = max(step - 1, 1)
    bars = []
    for i, value in enumerate(values):
        low = value or 0.0
        high = (stacked[i] if stacked else 0) or 0.0
        x = i * step
        h1 = low / top * (height - 14)
        h2 = high / top * (height - 14)
        if h1:
            bars.append(Bar(x, height - h1, bar_width, h1, "a", value))
        if h2:
            bars.append(Bar(x, height - h1 - h2, bar_width, h2, "b", high))
    caption = f"top: {top:,.0f} {unit}" if top >= 10 else f"top: {top:,.2f} {unit}"
    if not any(totals):
        caption = "nothing in the last hour"
    return BarChart(title, caption, width, height, bars)


def _no_none(value: object) -> object:
    """What a template prints for a value: None prints as nothing, not as `None`."""
    return "" if value is None else value


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("web.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, never prints blank
    finalize=_no_none,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.filters.update(age=age, when=when, money=money, query=query)
_ENVIRONMENT.globals.update(chart=chart)


def render(template: str, **context: Any) -> str:
    """The page `template` (a file name in `templates/`) shows for `context`."""
    return _ENVIRONMENT.get_template(template).render(**context)


def stylesheet() -> str:
    """The pages' one stylesheet."""
    return resources.files("web.dashboard").joinpath("static/dashboard.css").read_text("utf-8")
