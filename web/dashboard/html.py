"""Server-rendered HTML for the dashboard: a layout, tables, forms and SVG charts.

Everything interpolated goes through `esc`; the page needs no script and loads only the
stylesheet the app serves itself, so it works offline and on a phone. Nothing here may add
a script, an inline style or an event handler: the pages' Content-Security-Policy
(`web.dashboard.headers`) refuses them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode

from shared.ledger.auth import Principal
from shared.ledger.currencies import format_amount


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


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


def hidden(name: str, value: object) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def button_form(
    action: str,
    label: str,
    csrf: str,
    *,
    fields: Mapping[str, object] | None = None,
    danger: bool = False,
    disabled: bool = False,
) -> str:
    """A POST form that is one button, carrying the CSRF token and `fields`."""
    inputs = hidden("csrf", csrf) + "".join(hidden(k, v) for k, v in (fields or {}).items())
    attrs = (' class="danger"' if danger else "") + (" disabled" if disabled else "")
    return (
        f'<form method="post" action="{esc(action)}" class="inline">{inputs}'
        f"<button{attrs}>{esc(label)}</button></form>"
    )


def link_button(action: str, label: str, *, danger: bool = False, disabled: bool = False) -> str:
    """A button that opens `action` (a GET form: it carries no CSRF token, which must never
    end up in a URL), for a step that only shows something, such as a confirmation."""
    attrs = (' class="danger"' if danger else "") + (" disabled" if disabled else "")
    return (
        f'<form method="get" action="{esc(action)}" class="inline">'
        f"<button{attrs}>{esc(label)}</button></form>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "none") -> str:
    """A table of cells that are already HTML (escape text with `esc`)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{esc(empty)}</td></tr>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def layout(
    title: str,
    body: str,
    *,
    principal: Principal | None = None,
    csrf: str | None = None,
    refresh_seconds: int | None = None,
    refresh_url: str | None = None,
) -> str:
    """A whole page. With a principal: the navigation, who is logged in, and logout. With
    `refresh_seconds`, the browser loads `refresh_url` (else the page itself) that often."""
    refresh = ""
    if refresh_seconds:
        target = f"; url={refresh_url}" if refresh_url else ""
        refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}{esc(target)}">'
    nav = ""
    if principal is not None and csrf is not None:
        kind = "read-only operator" if principal.read_only else "operator"
        nav = (
            '<nav><a href="/dashboard">Overview</a> <a href="/dashboard/transfers">Transfers</a>'
            ' <a href="/dashboard/actions">Actions</a>'
            f'<span class="who">{esc(kind)} key {esc(principal.key_id)}</span>'
            + button_form("/dashboard/logout", "Log out", csrf)
            + "</nav>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{esc(title)} - Settle</title>"
        '<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>'
        f"<body><header><strong>Settle</strong>{nav}</header><main><h1>{esc(title)}</h1>"
        f"{body}</main></body></html>"
    )


def bar_chart(
    values: Sequence[float | None],
    *,
    title: str,
    unit: str,
    width: int = 600,
    height: int = 120,
    stacked: Sequence[float] | None = None,
) -> str:
    """An inline SVG bar chart of `values` (one bar each, oldest left), with `stacked`
    drawn on top in the second colour (e.g. failed over settled)."""
    n = max(len(values), 1)
    totals = [(v or 0) + ((stacked[i] if stacked else 0) or 0) for i, v in enumerate(values)]
    top = max(totals + [0.0]) or 1.0
    step = width / n
    bars = []
    for i, value in enumerate(values):
        low = value or 0.0
        high = (stacked[i] if stacked else 0) or 0.0
        x = i * step
        h1 = low / top * (height - 14)
        h2 = high / top * (height - 14)
        if h1:
            bars.append(
                f'<rect x="{x:.1f}" y="{height - h1:.1f}" width="{max(step - 1, 1):.1f}"'
                f' height="{h1:.1f}" class="a"><title>{esc(value)}</title></rect>'
            )
        if h2:
            bars.append(
                f'<rect x="{x:.1f}" y="{height - h1 - h2:.1f}" width="{max(step - 1, 1):.1f}"'
                f' height="{h2:.1f}" class="b"><title>{esc(high)}</title></rect>'
            )
    peak = f"top: {top:,.0f} {unit}" if top >= 10 else f"top: {top:,.2f} {unit}"
    if not any(totals):
        peak = "nothing in the last hour"
    return (
        f"<figure><figcaption>{esc(title)} <span class=muted>({esc(peak)})"
        f'</span></figcaption><svg viewBox="0 0 {width} {height}" preserveAspectRatio="none"'
        f' role="img" aria-label="{esc(title)}">{"".join(bars)}</svg>'
        "<div class=axis><span>-60 min</span><span>now</span></div></figure>"
    )


STYLESHEET = """
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #667; --line: #d8dde3;
  --accent: #2463eb; --bad: #c62828; --ok: #2e7d32; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8eb; --bg: #15181c; --muted: #9aa3ad;
  --line: #2c323a; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; padding: .6rem 1rem;
  border-bottom: 1px solid var(--line); }
nav { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; flex: 1; }
nav a { color: var(--accent); text-decoration: none; }
.who { margin-left: auto; color: var(--muted); font-size: .9em; }
main { padding: 1rem; max-width: 80rem; }
h1 { font-size: 1.3rem; margin: 0 0 1rem; } h2 { font-size: 1.05rem; margin: 1.4rem 0 .5rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .92em; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td.empty { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: .6rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; }
.card b { display: block; font-size: 1.4rem; }
.card.bad b { color: var(--bad); }
figure { margin: .5rem 0 1rem; } figcaption { color: var(--muted); font-size: .9em; }
svg { width: 100%; height: 120px; border-bottom: 1px solid var(--line); }
svg .a { fill: var(--accent); } svg .b { fill: var(--bad); }
.axis { display: flex; justify-content: space-between; color: var(--muted); font-size: .8em; }
form.inline { display: inline; margin: 0; }
form.filters { display: grid; grid-template-columns: repeat(auto-fill, minmax(10rem, 1fr));
  gap: .5rem; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .85em; color: var(--muted); }
input, select, button { font: inherit; padding: .35rem .5rem; border: 1px solid var(--line);
  border-radius: 4px; background: var(--bg); color: var(--fg); }
button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
button.danger { background: var(--bad); border-color: var(--bad); }
button[disabled] { opacity: .5; cursor: not-allowed; }
.notice { padding: .6rem .8rem; border: 1px solid var(--line); border-radius: 6px;
  margin: .5rem 0; }
.error { border-color: var(--bad); color: var(--bad); }
.muted { color: var(--muted); }
code, .mono { font-family: ui-monospace, monospace; font-size: .9em; word-break: break-all; }
"""
