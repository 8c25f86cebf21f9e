"""Dashboard sessions: an operator logs in with an operator API key and gets a signed cookie.

The cookie carries a random session id and its HMAC-SHA256 under the service's signing secret
(made once and kept in `service_secrets`, unless DASHBOARD_SESSION_SECRET is set; each web
process reads it once and keeps it), so a forged or altered cookie is refused without a
database read. The session row names the key it was
opened with; looking a session up joins `api_keys`, so revoking the key ends every session
it opened, and a session idle longer than the configured time is over. Each session has its
own CSRF token, which every state-changing form must echo. Functions raise `ApiKeyInvalid`
or `OperatorOnly` at login; driver errors propagate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import psycopg

from shared.ledger import auth
from shared.ledger.auth import Principal

SECRET_NAME = "dashboard_session"


@dataclass(frozen=True)
class Session:
    """A live session: its id (what the cookie names), its CSRF token and who it acts for."""

    id: bytes
    csrf_token: str
    principal: Principal


def session_secret(conn: psycopg.Connection) -> bytes:
    """The signing secret kept in the database, made on first use (concurrent first uses
    agree on one: the insert that loses does nothing)."""
    conn.execute(
        "INSERT INTO service_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (SECRET_NAME, secrets.token_bytes(32)),
    )
    row = conn.execute(
        "SELECT value FROM service_secrets WHERE name = %s", (SECRET_NAME,)
    ).fetchone()
    assert row is not None
    return bytes(row[0])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, session_id: bytes) -> str:
    """The cookie value naming `session_id`: the id and its MAC, both base64url."""
    mac = hmac.new(secret, b"session:" + session_id, hashlib.sha256).digest()
    return f"{_b64(session_id)}.{_b64(mac)}"


def unsign(secret: bytes, value: str) -> bytes | None:
    """The session id a cookie value names, or None when it was not signed with `secret`."""
    raw_id, _, raw_mac = value.partition(".")
    try:
        session_id, mac = _unb64(raw_id), _unb64(raw_mac)
    except (ValueError, TypeError):
        return None
    if len(session_id) != 32:
        return None
    expected = hmac.new(secret, b"session:" + session_id, hashlib.sha256).digest()
    return session_id if hmac.compare_digest(mac, expected) else None


def start(conn: psycopg.Connection, key: str, *, idle_seconds: float) -> Session:
    """Open a session for an operator `key` (read-only ones too). Raises `ApiKeyInvalid` for
    a malformed, unknown or revoked key and `OperatorOnly` for a user's key. Sessions idle
    past `idle_seconds` are deleted on the way."""
    principal = auth.authenticate(conn, key)
    auth.require_operator(principal)
    session_id, csrf = secrets.token_bytes(32), secrets.token_urlsafe(32)
    conn.execute(
        "DELETE FROM dashboard_sessions WHERE last_seen_at < now() - make_interval(secs => %s)",
        (idle_seconds,),
    )
    conn.execute(
        "INSERT INTO dashboard_sessions (id, key_id, csrf_token) VALUES (%s, %s, %s)",
        (session_id, principal.key_id, csrf),
    )
    return Session(session_id, csrf, principal)


def resume(
    conn: psycopg.Connection, session_id: bytes, *, idle_seconds: float, seen: bool = True
) -> Session | None:
    """The session `session_id`, seen now unless `seen` is False (a page refreshing itself
    is not the operator at work: it must not keep an idle session alive); None when it does
    not exist, was idle longer than `idle_seconds`, or its key has been revoked since."""
    row = conn.execute(
        "UPDATE dashboard_sessions s"
        " SET last_seen_at = CASE WHEN %s THEN now() ELSE s.last_seen_at END FROM api_keys k"
        " WHERE s.id = %s AND k.id = s.key_id AND k.revoked_at IS NULL AND k.user_id IS NULL"
        " AND s.last_seen_at >= now() - make_interval(secs => %s)"
        " RETURNING s.csrf_token, k.id, k.read_only",
        (seen, session_id, idle_seconds),
    ).fetchone()
    if row is None:
        return None
    return Session(session_id, row[0], Principal(user_id=None, key_id=row[1], read_only=row[2]))


def end(conn: psycopg.Connection, session_id: bytes) -> None:
    """Log out: the session is gone, whoever still holds its cookie."""
    conn.execute("DELETE FROM dashboard_sessions WHERE id = %s", (session_id,))


def csrf_matches(session: Session, sent: str | None) -> bool:
    """Whether a form echoed this session's CSRF token (compared in constant time)."""
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf_token.encode())
