"""The dashboard's HTML pages: login, overview, transfers needing attention, one transfer,
the actions taken, the forms that retry and cancel, and the webhooks: endpoints failing
first, one endpoint's deliveries, one delivery's attempts, and the forms that retry them.

Every page but login needs a session (else 303 to the login page); every POST but login
needs the session's CSRF token (else 403); a read-only key sees every page and its action
buttons disabled, and a POST it makes anyway is 403 `read_only_key`. Errors are pages too.
Each handler gathers plain data and renders a template of `templates/` (`render`); a new
page is a template and a handler routed in `add_dashboard`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import falcon

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
from shared.ledger.operator_actions import Acting
from shared.ledger.paging import decode_cursor
from shared.ledger.sessions import Session, csrf_matches
from shared.webhooks import operator
from web.dashboard import actions
from web.dashboard.render import render, stylesheet
from web.dashboard.resource import Resource
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
            resp.text = render("login_needed.html", session=None)
        except SettleError as exc:
            resp.status = status_of(exc)
            for name, value in headers_of(exc):  # Retry-After on a 503, as for the API
                resp.set_header(name, value)
            resp.content_type = HTML
            resp.text = render(
                "error.html",
                session=None,
                title="Refused" if resp.status[0] == "4" else "Unavailable",
                message=exc.message,
                code=exc.code,
            )

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


class _Page(Resource):
    """A page: it needs a session, and answers HTML."""

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

    def _acting(
        self, req: falcon.Request, resp: falcon.Response
    ) -> tuple[Session, Acting, Mapping[str, str]]:
        """The session, who acts and the form of a POST that acts on transfers. Raises
        `ReadOnlyKey` for a read-only key's session (a user's key has none)."""
        session, form = self._posted(req, resp)
        return session, operator_actions.require_acting(session.principal), form

    def _transfer_page(
        self, req: falcon.Request, resp: falcon.Response, transfer_id: str, template: str
    ) -> None:
        """Answer `template` showing one transfer (`t`: `attention.transfer_detail`)."""
        session = self._session(req, resp)
        query_params(req, ())
        tid = actions.transfer_id(transfer_id)
        with connection(self._pool) as conn:
            t = attention.transfer_detail(conn, tid)
        self._render(resp, template, session=session, t=t)

    @staticmethod
    def _render(resp: falcon.Response, template: str, **context: Any) -> None:
        """Answer the page `template` shows for `context` (which names the `session`, or
        None for a page shown without one)."""
        resp.content_type = HTML
        resp.cache_control = ["no-store"]
        resp.text = render(template, **context)


class Stylesheet:
    public = True

    def __init__(self) -> None:
        self._text = stylesheet()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/css; charset=utf-8"
        resp.cache_control = ["max-age=3600"]
        resp.text = self._text


class Login(_Page):
    def _form(self, req: falcon.Request, resp: falcon.Response, error: str | None = None) -> None:
        token = self._access.login_token(req, resp)
        self._render(resp, "login.html", session=None, csrf=token, error=error)

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


#: How often the overview reloads itself, and the query parameter marking such a reload.
REFRESH_SECONDS = 10
REFRESH_PARAM = "refresh"


class Overview(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The page reloads itself with REFRESH_PARAM: that is not the operator at work, so
        # it does not keep an idle session alive.
        session = self._session(req, resp, seen=req.get_param(REFRESH_PARAM) is None)
        query_params(req, (REFRESH_PARAM,))
        self._render(
            resp,
            "overview.html",
            session=session,
            overview=self._overview.gather(),
            threshold=self._threshold,
            refresh_seconds=REFRESH_SECONDS,
            refresh_url=f"/dashboard?{REFRESH_PARAM}=1",
        )


class TransferList(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self._session(req, resp)
        params = query_params(req, (*attention.FILTER_FIELDS, *PAGING))
        wanted = attention.transfer_filter({k: v for k, v in params.items() if k not in PAGING})
        limit = commands.limit(req.get_param("limit"), default=50)
        with connection(self._pool) as conn:
            found = attention.needing_attention(
                conn,
                wanted,
                stuck_after_seconds=self._threshold,
                limit=limit,
                cursor=req.get_param("cursor"),
            )
            counts = attention.count_matching(conn, wanted, stuck_after_seconds=self._threshold)
        self._render(
            resp,
            "transfers.html",
            session=session,
            states=attention.STATES,
            chosen_state=wanted.state,
            wanted=wanted.params(),
            found=found,
            counts=counts,
            threshold=self._threshold,
        )


class Transfer(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        self._transfer_page(req, resp, transfer_id, "transfer.html")


class _Action(_Page):
    def _one(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        transfer_id: str,
        act: actions.OneAction,
        title: str,
    ) -> None:
        """Do `act` (`actions.retry_one` or `cancel_one`) to one transfer, then back to its
        page; or, when the broker failed after the change committed, a page that says so."""
        session, by, _ = self._acting(req, resp)
        tid = actions.transfer_id(transfer_id)
        _, notice = act(self._pool, tid, by, broker=self._broker)
        if notice is None:
            resp.status = falcon.HTTP_303
            resp.location = f"/dashboard/transfers/{tid}"
            return
        self._render(
            resp,
            "action_notice.html",
            session=session,
            action=title,
            transfer_id=tid,
            notice=notice,
        )


class RetryOne(_Action):
    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        self._one(req, resp, transfer_id, actions.retry_one, "Retry")


class Cancel(_Action):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response, transfer_id: str) -> None:
        """The confirmation step: what would be cancelled, for good."""
        self._transfer_page(req, resp, transfer_id, "cancel.html")

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
            counts = attention.count_matching(conn, wanted, stuck_after_seconds=self._threshold)
        self._render(
            resp, "bulk_retry.html", session=session, wanted=wanted.params(), counts=counts
        )

    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        session, by, form = self._acting(req, resp)
        wanted = attention.transfer_filter({k: v for k, v in form.items() if k != "csrf"})
        sent, batches, notice = actions.bulk_retry(self._pool, wanted, by, broker=self._broker)
        with connection(self._pool) as conn:
            left = attention.count_matching(conn, wanted, stuck_after_seconds=self._threshold)[
                "retryable"
            ]
        log.info(
            "dashboard: key %s retried %d transfer(s) in %d batch(es)",
            session.principal.key_id,
            sent,
            batches,
        )
        self._render(
            resp,
            "bulk_retried.html",
            session=session,
            sent=sent,
            batches=batches,
            notice=notice,
            left=left,
            wanted=wanted.params(),
        )


class Actions(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self._session(req, resp)
        query_params(req, ())
        with connection(self._pool) as conn:
            rows = operator_actions.recent(conn, limit=100)
        self._render(resp, "actions.html", session=session, actions=rows)


def form_fields(form: Mapping[str, str], allowed: Collection[str]) -> None:
    """Raises `InvalidRequest` naming the fields of a POSTed form that are not `allowed`
    (besides the CSRF token)."""
    unknown = sorted(set(form) - {"csrf", *allowed})
    if unknown:
        raise InvalidRequest(f"unknown form field {_names(unknown)}")


def before_of(cursor: str | None) -> int | None:
    """The delivery id a page of deliveries' `cursor` names (None: the first page). Raises
    `InvalidCursor`."""
    return decode_cursor(cursor, operator.CURSOR_KIND)[0] if cursor else None


class Webhooks(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self._session(req, resp)
        query_params(req, ("limit",))
        limit = commands.limit(req.get_param("limit"), default=100)
        with connection(self._pool) as conn:
            rows, total = operator.endpoints(conn, limit=limit)
        self._render(resp, "webhooks.html", session=session, endpoints=rows, total=total)


class WebhookEndpoint(_Page):
    @page
    def on_get(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        session = self._session(req, resp)
        params = query_params(req, ("status", *PAGING))
        eid = actions.endpoint_id(endpoint_id)
        status = operator.status_filter(params.get("status"))
        limit = commands.limit(req.get_param("limit"), default=50)
        before = before_of(params.get("cursor"))
        with connection(self._pool) as conn:
            endpoint = operator.endpoint(conn, eid)
            found = operator.deliveries(conn, eid, status=status, limit=limit, before=before)
        self._render(
            resp,
            "webhook_endpoint.html",
            session=session,
            e=endpoint,
            found=found,
            statuses=operator.STATUSES,
            status=status,
        )


class WebhookRetryFailed(_Page):
    @page
    def on_post(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        session, by, form = self._acting(req, resp)
        form_fields(form, ())
        eid = actions.endpoint_id(endpoint_id)
        retried = actions.retry_endpoint(
            self._pool, eid, by, retry_hours=self._settings.webhook_retry_hours
        )
        log.info(
            "dashboard: key %s retried %d failed delivery(ies) of webhook endpoint %s",
            session.principal.key_id,
            retried,
            eid,
        )
        self._render(
            resp, "webhook_retried.html", session=session, endpoint_id=eid, retried=retried
        )


class WebhookDelivery(_Page):
    @page
    def on_get(
        self, req: falcon.Request, resp: falcon.Response, endpoint_id: str, delivery_id: str
    ) -> None:
        session = self._session(req, resp)
        query_params(req, ())
        eid, did = actions.endpoint_id(endpoint_id), actions.delivery_id(delivery_id)
        with connection(self._pool) as conn:
            endpoint = operator.endpoint(conn, eid)
            delivery = operator.delivery(conn, did, endpoint_id=eid)
        self._render(resp, "webhook_delivery.html", session=session, e=endpoint, d=delivery)


class WebhookRetryOne(_Page):
    @page
    def on_post(
        self, req: falcon.Request, resp: falcon.Response, endpoint_id: str, delivery_id: str
    ) -> None:
        session, by, form = self._acting(req, resp)
        form_fields(form, ())
        eid, did = actions.endpoint_id(endpoint_id), actions.delivery_id(delivery_id)
        retried = actions.retry_delivery(
            self._pool, eid, did, by, retry_hours=self._settings.webhook_retry_hours
        )
        if retried:
            log.info("dashboard: key %s retried webhook delivery %s", session.principal.key_id, did)
        resp.status = falcon.HTTP_303
        resp.location = f"/dashboard/webhooks/{eid}/deliveries/{did}"
