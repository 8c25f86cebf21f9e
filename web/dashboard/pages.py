"""The dashboard's HTML pages: login, overview, transfers needing attention, one transfer,
the actions taken, and the forms that retry and cancel.

Every page but login needs a session (else 303 to the login page); every POST but login
needs the session's CSRF token (else 403); a read-only key sees every page and its action
buttons disabled, and a POST it makes anyway is 403 `read_only_key`. Errors are pages too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import falcon
from psycopg_pool import ConnectionPool

from shared.db.pool import connection
from shared.errors import (
    BodyTooLarge,
    CsrfRefused,
    InvalidRequest,
    OperatorOnly,
    SettleError,
    Unauthenticated,
    UnsupportedMediaType,
)
from shared.ledger import attention, commands, operator_actions
from shared.ledger.attention import TransferFilter
from shared.ledger.sessions import Session, csrf_matches
from shared.runtime.settings import Settings
from web.dashboard import actions, html
from web.dashboard.access import Access
from web.dashboard.data import OverviewSource
from web.errors import headers_of, status_of

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
LOGIN = "/dashboard/login"
#: Form bodies are small: a key, a CSRF token, a filter.
MAX_FORM_BYTES = 8192


class LoginRequired(Exception):
    """Raised inside a page when there is no live session (it answers 303 to the login)."""


def page(responder: Callable[..., None]) -> Callable[..., None]:
    """Answer a page's domain errors as an HTML page with the error's status and code, and a
    missing session as 303 to the login page."""

    @functools.wraps(responder)
    def guarded(self: Any, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        try:
            responder(self, req, resp, **params)
        except LoginRequired:
            resp.status = falcon.HTTP_303
            resp.location = LOGIN
            resp.content_type = HTML
            resp.text = html.layout("Log in", '<p><a href="/dashboard/login">Log in</a></p>')
        except SettleError as exc:
            resp.status = status_of(exc)
            for name, value in headers_of(exc):  # Retry-After on a 503, as for the API
                resp.set_header(name, value)
            resp.content_type = HTML
            body = (
                f'<p class="notice error">{html.esc(exc.message)} (<code>{html.esc(exc.code)}'
                '</code>)</p><p><a href="/dashboard">Back to the overview</a></p>'
            )
            resp.text = html.layout("Refused" if resp.status[0] == "4" else "Unavailable", body)

    return guarded


def read_form(req: falcon.Request) -> Mapping[str, str]:
    """The urlencoded form of a POST. Raises `UnsupportedMediaType`, `BodyTooLarge`, and for a
    field sent twice (the dashboard's forms never do) `CsrfRefused` when it is the CSRF token,
    else `InvalidRequest`."""
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != falcon.MEDIA_URLENCODED:
        raise UnsupportedMediaType("send the form as application/x-www-form-urlencoded")
    if req.content_length is not None and req.content_length > MAX_FORM_BYTES:
        raise BodyTooLarge(f"the form is larger than {MAX_FORM_BYTES} bytes")
    raw = req.bounded_stream.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise BodyTooLarge(f"the form is larger than {MAX_FORM_BYTES} bytes")
    parsed = falcon.uri.parse_query_string(
        raw.decode("utf-8", "replace"), keep_blank=True, csv=False
    )
    repeated = sorted(k for k, v in parsed.items() if isinstance(v, list))
    if "csrf" in repeated:
        raise CsrfRefused("the form sent its CSRF token twice; reload it")
    if repeated:
        raise InvalidRequest(f"the form sent {', '.join(repeated)} more than once")
    return {k: str(v) for k, v in parsed.items()}


#: The query parameters that page through a list.
PAGING = ("limit", "cursor")


def query_params(req: falcon.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query string's parameters. Raises `InvalidRequest` naming those that are not
    `allowed` or are given more than once: a typo must not widen what an operator sees or
    acts on."""
    unknown = sorted(set(req.params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise InvalidRequest(
            f"unknown query parameter {_names(unknown)} (this page takes: {known})"
        )
    repeated = sorted(k for k, v in req.params.items() if isinstance(v, list))
    if repeated:
        raise InvalidRequest(f"query parameter {_names(repeated)} given more than once")
    return {k: str(v) for k, v in req.params.items()}


def _names(names: list[str]) -> str:
    """Parameter names for an error message, a few of them, each cut short."""
    shown = ", ".join(n[:40] for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class _Page:
    public = True  # not RequireApiKey's: a page checks its own session

    def __init__(self, access: Access, pool: ConnectionPool, settings: Settings) -> None:
        self._access = access
        self._pool = pool
        self._settings = settings

    def _session(self, req: falcon.Request, resp: falcon.Response, *, seen: bool = True) -> Session:
        session = self._access.session(req, seen=seen)
        if session is None:
            self._access.clear_cookie(req, resp)
            raise LoginRequired
        return session

    def _posted(
        self, req: falcon.Request, resp: falcon.Response
    ) -> tuple[Session, Mapping[str, str]]:
        """The session and form of a state-changing POST, its CSRF token checked."""
        session = self._session(req, resp)
        form = read_form(req)
        if not csrf_matches(session, form.get("csrf")):
            raise CsrfRefused("the form is stale or was not sent by the dashboard; reload it")
        return session, form

    def _render(
        self, resp: falcon.Response, session: Session, title: str, body: str, **kw: Any
    ) -> None:
        resp.content_type = HTML
        resp.cache_control = ["no-store"]
        resp.text = html.layout(
            title, body, principal=session.principal, csrf=session.csrf_token, **kw
        )


class Stylesheet:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/css; charset=utf-8"
        resp.cache_control = ["max-age=3600"]
        resp.text = html.STYLESHEET


class Login(_Page):
    def _form(self, req: falcon.Request, resp: falcon.Response, error: str | None = None) -> None:
        token = self._access.login_token(req, resp)
        notice = f'<p class="notice error">{html.esc(error)}</p>' if error else ""
        resp.content_type = HTML
        resp.cache_control = ["no-store"]
        resp.text = html.layout(
            "Log in",
            f'{notice}<form method="post" action="/dashboard/login" class="filters">'
            + html.hidden("csrf", token)
            + '<label>Operator API key<input name="key" id="key" type="password"'
            ' autocomplete="off" required autofocus></label><button id="login">Log in</button>'
            "</form>"
            "<p class=muted>Make one with <code>settle keys create --operator</code>"
            " (add <code>--read-only</code> for a key that only looks).</p>",
        )

    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query_params(req, ())
        self._form(req, resp)

    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            form = read_form(req)
            self._access.check_login_token(req, form.get("csrf"))
            session, cookie = self._access.log_in((form.get("key") or "").strip())
        except (Unauthenticated, OperatorOnly, CsrfRefused) as exc:
            # A refusal shows the form again; an outage (503) is the error page.
            resp.status = status_of(exc)
            if isinstance(exc, OperatorOnly):
                message = "That is a user's key; the dashboard needs an operator key."
            elif isinstance(exc, CsrfRefused):
                message = exc.message
            else:
                message = "That key is not valid (unknown, revoked or mistyped)."
            self._access.clear_cookie(req, resp)
            self._form(req, resp, message)
            return
        log.info("dashboard: key %s logged in", session.principal.key_id)
        self._access.set_cookie(req, resp, cookie)
        resp.status = falcon.HTTP_303
        resp.location = "/dashboard"


class Logout(_Page):
    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        session, _ = self._posted(req, resp)
        self._access.log_out(session)
        self._access.clear_cookie(req, resp)
        resp.status = falcon.HTTP_303
        resp.location = LOGIN


def _card(label: str, value: object, *, bad: bool = False) -> str:
    cls = "card bad" if bad else "card"
    return f'<div class="{cls}"><b>{html.esc(value)}</b>{html.esc(label)}</div>'


def render_overview(data: dict[str, Any], threshold: float) -> str:
    queues = data["queues"]
    if queues is None:
        queue_cards = f'<p class="notice error">Queues: {html.esc(data["queue_error"])}</p>'
    else:
        queue_cards = (
            '<div class="cards">'
            + "".join(
                # Messages, not transfers: the dead-lettered transfers are the card below.
                _card(label, queues.get(key, 0))
                for key, label in (
                    ("ready", "messages ready"),
                    ("delayed", "messages delayed (retry backoff)"),
                    ("in_flight", "messages in flight"),
                    ("dead", "messages in the dead-letter queue"),
                )
            )
            + "</div>"
        )
    t = data["transfers"]
    about = "" if data["transfers_exact"] else "~"  # estimated from Postgres's statistics
    oldest = data["oldest_pending_seconds"]
    transfer_cards = (
        '<div class="cards">'
        + "".join(
            [
                _card("pending", t["pending"]),
                _card("settled", f"{about}{t['settled']}"),
                _card("failed", f"{about}{t['failed']}"),
                _card("dead-lettered transfers", t["dead_lettered"], bad=t["dead_lettered"] > 0),
                _card(
                    "oldest pending",
                    html.age(oldest),
                    bad=oldest > threshold,
                ),
            ]
        )
        + "</div>"
    )
    minutes = data["last_hour"]
    charts = (
        html.bar_chart(
            [m["settled"] for m in minutes],
            stacked=[m["failed"] for m in minutes],
            title="Transfers finished per minute (settled; failed on top)",
            unit="/min",
        )
        + html.bar_chart(
            [m["p99_ms"] for m in minutes],
            title="Accepted -> settled latency per minute, p99",
            unit="ms",
        )
        + html.bar_chart(
            [m["p50_ms"] for m in minutes],
            title="Accepted -> settled latency per minute, p50",
            unit="ms",
        )
    )
    workers = html.table(
        ["process", "role", "pool (granted / wanted)", "connections (busy)", "heartbeat"],
        (
            [
                f'<span class="mono">{html.esc(w["holder"])}</span>',
                html.esc(w["role"]),
                f"{w['granted']} / {w['wanted']}",
                f"{w['connected']} ({w['busy']})",
                html.when(w["heartbeat_at"]),
            ]
            for w in data["workers"]
        ),
        empty="no live process holds a lease",
    )
    budget = data["budget"]
    refusal = (
        '<p class="notice error">The configured plan does not fit: '
        f"{html.esc(budget['refusal'])}</p>"
        if budget["refusal"]
        else ""
    )
    budget_table = html.table(
        ["role", "plan", "leased (live leases)", "connected (pg_stat_activity)"],
        (
            [
                html.esc(r["role"]),
                html.esc("-" if r["planned"] is None else r["planned"]),
                html.esc(r["leased"]),
                html.esc(r["connected"])
                + (
                    ' <span class="notice error">over plan</span>'
                    if r["planned"] is not None and r["connected"] > r["planned"]
                    else ""
                ),
            ]
            for r in budget["roles"]
        ),
    )
    return (
        "<h2>Queue</h2>"
        + queue_cards
        + "<h2>Transfers</h2>"
        + transfer_cards
        + '<p><a href="/dashboard/transfers">Transfers needing attention</a></p>'
        + "<h2>Last hour</h2>"
        + charts
        + "<h2>Processes alive</h2>"
        + workers
        + f"<h2>Connection budget: {html.esc(budget['available'])} available</h2>"
        + f'<p class="muted">{html.esc(budget["source"])}</p>'
        + refusal
        + budget_table
    )


#: How often the overview reloads itself, and the query parameter marking such a reload.
REFRESH_SECONDS = 10
REFRESH_PARAM = "refresh"


class Overview(_Page):
    def __init__(
        self, access: Access, pool: ConnectionPool, settings: Settings, source: OverviewSource
    ) -> None:
        super().__init__(access, pool, settings)
        self._source = source

    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The page reloads itself with REFRESH_PARAM: that is not the operator at work, so
        # it does not keep an idle session alive.
        session = self._session(req, resp, seen=req.get_param(REFRESH_PARAM) is None)
        query_params(req, (REFRESH_PARAM,))
        data = self._source.gather()
        body = render_overview(data, self._settings.dashboard_pending_threshold_seconds)
        self._render(
            resp,
            session,
            "Overview",
            body,
            refresh_seconds=REFRESH_SECONDS,
            refresh_url=f"/dashboard?{REFRESH_PARAM}=1",
        )


_FILTER_FIELDS = (
    ("state", "Which"),
    ("account", "Account id"),
    ("user", "User id"),
    ("currency", "Currency"),
    ("min_amount", "Amount from (cents)"),
    ("max_amount", "Amount to (cents)"),
    ("failure_code", "Failure code"),
    ("error", "Error text"),
    ("older_than_minutes", "Older than (min)"),
)


def _filter_form(wanted: TransferFilter) -> str:
    current = wanted.params()
    cells = []
    for name, label in _FILTER_FIELDS:
        if name == "state":
            options = "".join(
                f'<option value="{s}"{" selected" if wanted.state == s else ""}>{s}</option>'
                for s in attention.STATES
            )
            cells.append(f"<label>{label}<select name=state>{options}</select></label>")
        else:
            cells.append(
                f'<label>{label}<input name="{name}" value="{html.esc(current.get(name, ""))}">'
                "</label>"
            )
    return (
        '<form method="get" action="/dashboard/transfers" class="filters">'
        + "".join(cells)
        + "<button>Filter</button></form>"
    )


def _transfer_row(row: dict[str, Any]) -> list[str]:
    return [
        f'<a href="/dashboard/transfers/{row["id"]}">{row["id"]}</a>',
        html.esc(row["state"]),
        f'account {row["from_account_id"]} <span class="muted">(user {row["from_user_id"]})</span>',
        f'account {row["to_account_id"]} <span class="muted">(user {row["to_user_id"]})</span>',
        html.esc(html.money(row["amount"], row["currency"])),
        html.esc(row["attempts"]),
        html.esc(row["failure_code"] or ""),
        f'<span class="mono">{html.esc((row["last_error"] or "")[:160])}</span>',
        html.esc(html.age(row["age_seconds"])),
    ]


TRANSFER_HEADERS = [
    "id",
    "state",
    "from",
    "to",
    "amount",
    "attempts",
    "failure",
    "last error",
    "age",
]


class TransferList(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self._session(req, resp)
        params = query_params(req, (*attention.FILTER_FIELDS, *PAGING))
        wanted = attention.transfer_filter({k: v for k, v in params.items() if k not in PAGING})
        limit = commands.limit(req.get_param("limit"), default=50)
        threshold = self._settings.dashboard_pending_threshold_seconds
        with connection(self._pool) as conn:
            found = attention.needing_attention(
                conn,
                wanted,
                stuck_after_seconds=threshold,
                limit=limit,
                cursor=req.get_param("cursor"),
            )
            counts = attention.count_matching(conn, wanted, stuck_after_seconds=threshold)
        more = (
            '<p><a href="/dashboard/transfers'
            f'{html.query({**wanted.params(), "cursor": found.next_cursor})}">Next page</a></p>'
            if found.next_cursor
            else ""
        )
        bulk = ""
        if counts["retryable"]:
            bulk = (
                f'<p><a href="/dashboard/transfers/retry{html.query(wanted.params())}">'
                f"Retry all {counts['retryable']} dead-lettered transfer(s) matching this filter"
                "</a></p>"
            )
        body = (
            _filter_form(wanted)
            + f'<p class="muted">{counts["matching"]} transfer(s) match; dead-lettered ones can'
            f" be retried; pending ones count as stuck after {html.age(threshold)}.</p>"
            + bulk
            + html.table(
                TRANSFER_HEADERS,
                (_transfer_row(r) for r in found.items),
                empty="nothing needs attention",
            )
            + more
        )
        self._render(resp, session, "Transfers needing attention", body)


class Transfer(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        session = self._session(req, resp)
        query_params(req, ())
        tid = actions.transfer_id(transfer_id)
        with connection(self._pool) as conn:
            t = attention.transfer_detail(conn, tid)
        fields = [
            ("status", t["status"]),
            ("amount", html.money(t["amount"], t["currency"])),
            ("from", f"account {t['from_account_id']} (user {t['from_user_id']})"),
            ("to", f"account {t['to_account_id']} (user {t['to_user_id']})"),
            ("attempts", t["attempts"]),
            ("failure code", t["failure_code"] or "-"),
            ("last error", t["last_error"] or "-"),
            ("accepted", html.when(t["created_at"])),
            ("last sent", html.when(t["enqueued_at"])),
            ("dead-lettered", html.when(t["dead_lettered_at"])),
            ("settled", html.when(t["settled_at"])),
            ("finished", html.when(t["finished_at"])),
            ("idempotency", f"{t['idempotency_scope']} / {t['idempotency_key']}"),
            *((f"metadata {key}", value) for key, value in t["metadata"].items()),
        ]
        summary = html.table(
            ["field", "value"],
            ([html.esc(k), f'<span class="mono">{html.esc(v)}</span>'] for k, v in fields),
        )
        read_only = session.principal.read_only
        buttons = ""
        if t["dead_lettered_at"] is not None:
            buttons = (
                "<p>"
                + html.button_form(
                    f"/dashboard/transfers/{tid}/retry",
                    "Retry",
                    session.csrf_token,
                    disabled=read_only,
                )
                + " "
                + html.link_button(
                    f"/dashboard/transfers/{tid}/cancel",
                    "Cancel... (ends failed, moves no money)",
                    danger=True,
                    disabled=read_only,
                )
                + ("<span class=muted> (read-only key)</span>" if read_only else "")
                + "</p>"
            )
        entries = html.table(
            ["entry", "account", "amount", "when"],
            (
                [
                    html.esc(e["id"]),
                    html.esc(e["account_id"]),
                    html.esc(html.money(e["amount"], t["currency"])),
                    html.when(e["created_at"]),
                ]
                for e in t["entries"]
            ),
            empty="no entries (only a settled transfer has them)",
        )
        taken = html.table(
            ["when", "key", "action", "detail"],
            (
                [
                    html.when(a["created_at"]),
                    html.esc(f"{a['key_id']} {a['key_label'] or ''}"),
                    html.esc(a["action"]),
                    html.esc(a["detail"]),
                ]
                for a in t["actions"]
            ),
            empty="no operator action yet",
        )
        body = (
            buttons
            + summary
            + "<h2>Ledger entries</h2>"
            + entries
            + f"<h2>Attempts</h2><p>{html.esc(t['attempts'])} settlement attempt(s);"
            " the last error is kept above.</p>" + "<h2>Operator actions</h2>" + taken
        )
        self._render(resp, session, f"Transfer {tid}", body)


class _Action(_Page):
    def __init__(
        self, access: Access, pool: ConnectionPool, settings: Settings, broker: actions.BrokerCalls
    ) -> None:
        super().__init__(access, pool, settings)
        self._broker = broker

    def _one(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        transfer_id: str,
        act: Callable[..., tuple[bool, str | None]],
        title: str,
    ) -> None:
        """Do `act` (`actions.retry_one` or `cancel_one`) to one transfer, then back to its
        page; or, when the broker failed after the change committed, a page that says so."""
        session, _ = self._posted(req, resp)
        tid = actions.transfer_id(transfer_id)
        _, notice = act(self._pool, tid, session.principal, broker=self._broker)
        if notice is None:
            resp.status = falcon.HTTP_303
            resp.location = f"/dashboard/transfers/{tid}"
            return
        body = (
            f'<p class="notice error" id="retry-notice">{html.esc(notice)}</p>'
            f'<p><a href="/dashboard/transfers/{tid}">Back to transfer {tid}</a></p>'
        )
        self._render(resp, session, f"{title} of transfer {tid}", body)


class RetryOne(_Action):
    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        self._one(req, resp, transfer_id, actions.retry_one, "Retry")


class Cancel(_Action):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        """The confirmation step: what would be cancelled, for good."""
        session = self._session(req, resp)
        query_params(req, ())
        tid = actions.transfer_id(transfer_id)
        with connection(self._pool) as conn:
            t = attention.transfer_detail(conn, tid)
        back = f'<a href="/dashboard/transfers/{tid}">Back to transfer {tid}</a>'
        if t["dead_lettered_at"] is None:
            body = (
                f'<p class="notice">Transfer {tid} is not dead-lettered (it is'
                f" {html.esc(t['status'])}); there is nothing to cancel.</p><p>{back}</p>"
            )
        else:
            read_only = session.principal.read_only
            body = (
                f'<p class="notice error" id="cancel-warning">Cancel transfer <b>{tid}</b> of'
                f" {html.esc(html.money(t['amount'], t['currency']))} from account"
                f" {t['from_account_id']} to account {t['to_account_id']}? It ends failed"
                " (<code>cancelled_by_operator</code>) and moves no money. This cannot be"
                " undone.</p><p>"
                + html.button_form(
                    f"/dashboard/transfers/{tid}/cancel",
                    f"Yes, cancel transfer {tid}",
                    session.csrf_token,
                    danger=True,
                    disabled=read_only,
                )
                + (" <span class=muted>(read-only key)</span>" if read_only else "")
                + f" {back}</p>"
            )
        self._render(resp, session, f"Cancel transfer {tid}?", body)

    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        self._one(req, resp, transfer_id, actions.cancel_one, "Cancel")


class BulkRetry(_Action):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The confirmation step: how many would be sent again."""
        session = self._session(req, resp)
        wanted = attention.transfer_filter(query_params(req, attention.FILTER_FIELDS))
        with connection(self._pool) as conn:
            counts = attention.count_matching(
                conn, wanted, stuck_after_seconds=self._settings.dashboard_pending_threshold_seconds
            )
        shown = ", ".join(f"{k} = {v}" for k, v in sorted(wanted.params().items())) or "none"
        read_only = session.principal.read_only
        body = (
            f'<p class="notice">Retry <b id="retry-count">{counts["retryable"]}</b> dead-lettered'
            f" transfer(s) matching the filter ({html.esc(shown)})? Each gets a fresh message and"
            " a fresh retry budget.</p>"
            + html.button_form(
                "/dashboard/transfers/retry",
                f"Yes, retry {counts['retryable']}",
                session.csrf_token,
                fields=wanted.params(),
                disabled=read_only or counts["retryable"] == 0,
            )
            + (" <span class=muted>(read-only key)</span>" if read_only else "")
            + f' <a href="/dashboard/transfers{html.query(wanted.params())}">Back</a>'
        )
        self._render(resp, session, "Confirm bulk retry", body)

    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        session, form = self._posted(req, resp)
        wanted = attention.transfer_filter({k: v for k, v in form.items() if k != "csrf"})
        sent, batches, notice = actions.bulk_retry(
            self._pool, wanted, session.principal, broker=self._broker
        )
        with connection(self._pool) as conn:
            left = attention.count_matching(
                conn, wanted, stuck_after_seconds=self._settings.dashboard_pending_threshold_seconds
            )["retryable"]
        log.info(
            "dashboard: key %s retried %d transfer(s) in %d batch(es)",
            session.principal.key_id,
            sent,
            batches,
        )
        more = ""
        if left:
            more = (
                f"<p>{left} still match (new ones, or time ran out). "
                + html.button_form(
                    "/dashboard/transfers/retry",
                    f"Retry {left} more",
                    session.csrf_token,
                    fields=wanted.params(),
                )
                + "</p>"
            )
        body = (
            f'<p class="notice" id="retry-result">Sent {sent} transfer(s) again in {batches}'
            " batch(es).</p>"
            + (f'<p class="notice error">{html.esc(notice)}</p>' if notice else "")
            + more
            + f'<p><a href="/dashboard/transfers{html.query(wanted.params())}">Back to the list</a>'
            ' <a href="/dashboard/actions">Actions</a></p>'
        )
        self._render(resp, session, "Bulk retry", body)


class Actions(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self._session(req, resp)
        query_params(req, ())
        with connection(self._pool) as conn:
            rows = operator_actions.recent(conn, limit=100)
        body = html.table(
            ["when", "key", "action", "transfers", "detail"],
            (
                [
                    html.when(a["created_at"]),
                    html.esc(f"{a['key_id']} {a['key_label'] or ''}"),
                    html.esc(a["action"]),
                    ", ".join(
                        f'<a href="/dashboard/transfers/{t}">{t}</a>'
                        for t in a["transfer_ids"][:20]
                    )
                    + (
                        f" and {len(a['transfer_ids']) - 20} more"
                        if len(a["transfer_ids"]) > 20
                        else ""
                    ),
                    html.esc(a["detail"]),
                ]
                for a in rows
            ),
            empty="no operator action yet",
        )
        self._render(resp, session, "Operator actions", body)
