"""Who is asking, for the dashboard's pages and its JSON twin.

Pages use a session: `POST /dashboard/login` turns an operator key into a signed cookie
(`HttpOnly; SameSite=Strict; Path=/dashboard`, `Secure` over https or with
DASHBOARD_SECURE_COOKIE), and every state-changing form echoes the session's CSRF token.
The JSON twin takes an operator key as `Authorization: Bearer`, or the session cookie with
the CSRF token in an `X-CSRF-Token` header for what changes something.
"""

from __future__ import annotations

import re
import secrets
import threading

import falcon
import psycopg
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.pool import connection
from shared.errors import ApiKeyMissing, CsrfRefused
from shared.ledger import auth, sessions
from shared.ledger.auth import Principal
from shared.ledger.sessions import Session
from web.auth import bearer_key

COOKIE = "settle_dashboard"
#: The login form's CSRF token is checked against this cookie (there is no session yet).
LOGIN_COOKIE = "settle_dashboard_login"
PATH = "/dashboard"
#: What `secrets.token_urlsafe(32)` makes: the only login token accepted back.
_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class Access:
    """Sessions and keys for the dashboard; one instance serves every thread."""

    def __init__(self, settings: Settings, pool: ConnectionPool) -> None:
        self._settings = settings
        self._pool = pool
        self._secret: bytes | None = (
            settings.dashboard_session_secret.encode()
            if settings.dashboard_session_secret
            else None
        )
        self._lock = threading.Lock()

    @property
    def idle_seconds(self) -> float:
        return self._settings.dashboard_idle_seconds

    def _signing_secret(self, conn: psycopg.Connection) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = sessions.session_secret(conn)
            return self._secret

    def _known_secret(self) -> bytes:
        """The signing secret, read from the database by the first request of this process
        that needs it and kept for the process's life (rotating it: docs/dashboard.md)."""
        with self._lock:
            if self._secret is not None:
                return self._secret
        with connection(self._pool) as conn:
            return self._signing_secret(conn)

    def session(self, req: falcon.Request, *, seen: bool = True) -> Session | None:
        """The live session the request's cookie names, or None (no cookie, a forged one, an
        expired or logged-out session, a revoked key). A cookie is checked against the
        signing secret before any connection is taken: a forged one costs no checkout.
        `seen=False` (a page refreshing itself) does not count as the operator's activity."""
        values = req.get_cookie_values(COOKIE) or []
        if not values:
            return None
        secret = self._known_secret()
        for value in values:
            session_id = sessions.unsign(secret, value)
            if session_id is not None:
                with connection(self._pool) as conn:
                    return sessions.resume(
                        conn, session_id, secret=secret, idle_seconds=self.idle_seconds, seen=seen
                    )
        return None

    def log_in(self, key: str) -> tuple[Session, str]:
        """A new session for an operator `key`, and the cookie value naming it. Raises
        `ApiKeyInvalid` or `OperatorOnly`."""
        auth.check_well_formed(key)
        with connection(self._pool) as conn:
            secret = self._signing_secret(conn)
            session = sessions.start(conn, key, secret=secret, idle_seconds=self.idle_seconds)
        return session, sessions.sign(secret, session.id)

    def log_out(self, session: Session) -> None:
        with connection(self._pool) as conn:
            sessions.end(conn, session.id)

    def _set(self, req: falcon.Request, resp: falcon.Response, name: str, value: str) -> None:
        """Set a dashboard cookie: HttpOnly, SameSite=Strict, for /dashboard only, and Secure
        over https or with DASHBOARD_SECURE_COOKIE. No Max-Age: the browser keeps it for its
        session, and the server decides when the session is over (idle time, logout, a
        revoked key)."""
        secure = self._settings.dashboard_secure_cookie or req.scheme == "https"
        resp.set_cookie(name, value, path=PATH, secure=secure, http_only=True, same_site="Strict")

    def set_cookie(self, req: falcon.Request, resp: falcon.Response, value: str) -> None:
        self._set(req, resp, COOKIE, value)

    def clear_cookie(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.unset_cookie(COOKIE, path=PATH, same_site="Strict")

    def login_token(self, req: falcon.Request, resp: falcon.Response) -> str:
        """The login form's CSRF token: the one in the browser's login cookie when it is one
        this service could have made, else a new one."""
        current = req.get_cookie_values(LOGIN_COOKIE) or []
        if len(current) == 1 and _LOGIN_TOKEN.fullmatch(current[0]):
            token = current[0]
        else:
            token = secrets.token_urlsafe(32)
        self._set(req, resp, LOGIN_COOKIE, token)
        return token

    @staticmethod
    def check_login_token(req: falcon.Request, sent: str | None) -> None:
        """Raises `CsrfRefused` unless the login form echoed the login cookie's token (one
        cookie, one well-formed token: anything else is refused, never an error)."""
        current = req.get_cookie_values(LOGIN_COOKIE) or []
        if not (
            len(current) == 1
            and _LOGIN_TOKEN.fullmatch(current[0])
            and sessions.tokens_match(current[0], sent)
        ):
            raise CsrfRefused("the form is stale or was not sent by the dashboard; log in again")

    def api_principal(self, req: falcon.Request, *, changes: bool) -> Principal:
        """Who a JSON twin request acts for: an operator key as Bearer, or a session (with
        the CSRF token in `X-CSRF-Token` when it `changes` something). Raises
        `ApiKeyMissing`, `ApiKeyInvalid`, `OperatorOnly` or `CsrfRefused`."""
        header = req.get_header("Authorization")
        if header is None:
            session = self.session(req)
            if session is None:
                raise ApiKeyMissing(
                    "send an operator key as `Authorization: Bearer <key>`, or log in"
                )
            if changes and not sessions.csrf_matches(session, req.get_header("X-CSRF-Token")):
                raise CsrfRefused("send the session's CSRF token in X-CSRF-Token")
            return session.principal
        key = bearer_key(header)
        auth.check_well_formed(key)
        with connection(self._pool) as conn:
            found = auth.authenticate(conn, key)
        auth.require_operator(found)
        return found
