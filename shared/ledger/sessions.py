"""Dashboard sessions: an operator logs in with an operator API key and gets a signed cookie.

The cookie carries a random session id and its HMAC-SHA256 under the service's signing secret
(made once and kept in `service_secrets`, unless DASHBOARD_SESSION_SECRET is set; each web
process reads it once and keeps it), so a forged or altered cookie is refused without a
database read. The database keeps only the SHA-256 of the session id, and no CSRF token:
each session's token is derived from its id with the signing secret. So a copy of the
database opens nothing: the hash cannot be turned back into an id, and a cookie signed with
the stored secret over any other id names no session. The session row names the key it was
opened with; looking a session up joins `api_keys`, so revoking the key ends every session
it opened, and a session idle longer than the configured time is over. Functions raise
`ApiKeyInvalid` or `OperatorOnly` at login; driver errors propagate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import psycopg

from shared.ledger import auth
from shared.ledger.auth import Principal

SECRET_NAME = "dashboard_session"
#: Bytes of a session id.
ID_BYTES = 32


@dataclass(frozen=True)
class Session:
    """A live session: its id (what the cookie names; never stored), its CSRF token and who
    it acts for."""

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


def id_hash(session_id: bytes) -> bytes:
    """What the database keeps of a session id: its SHA-256."""
    return hashlib.sha256(session_id).digest()


def csrf_token(secret: bytes, session_id: bytes) -> str:
    """The CSRF token of session `session_id`: derived with the signing secret, never stored
    (without the session id, which only the cookie holds, the secret alone derives none)."""
    return _b64(hmac.new(secret, b"csrf:" + session_id, hashlib.sha256).digest())


def sign(secret: bytes, session_id: bytes) -> str:
    """The cookie value naming `session_id`: the id and its MAC, both base64url."""
    mac = hmac.new(secret, b"session:" + session_id, hashlib.sha256).digest()
    return f"{_b64(session_id)}.{_b64(mac)}"


def unsign(secret: bytes, value: str) -> bytes | None:
    """The session id a cookie value names, or None when it was not signed with `secret`
    (anything malformed included: other characters, other lengths)."""
    raw_id, _, raw_mac = value.partition(".")
    if not value.isascii() or len(raw_id) != 43 or len(raw_mac) != 43:
        return None
    try:
        session_id, mac = _unb64(raw_id), _unb64(raw_mac)
    except (ValueError, binascii.Error):
        return None
    if len(session_id) != ID_BYTES:
        return None
    expected = hmac.new(secret, b"session:" + session_id, hashlib.sha256).digest()
    return session_id if hmac.compare_digest(mac, expected) else None


def start(conn: psycopg.Connection, key: str, *, secret: bytes, idle_seconds: float) -> Session:
    """Open a session for an operator `key` (read-only ones too). Raises `ApiKeyInvalid` for
    a malformed, unknown or revoked key and `OperatorOnly` for a user's key. Sessions idle
    past `idle_seconds` are deleted on the way."""
    principal = auth.authenticate(conn, key)
    auth.require_operator(principal)
    session_id = secrets.token_bytes(ID_BYTES)
    conn.execute(
        "DELETE FROM dashboard_sessions WHERE last_seen_at < now() - make_interval(secs => %s)",
        (idle_seconds,),
    )
    conn.execute(
        "INSERT INTO dashboard_sessions (id_hash, key_id) VALUES (%s, %s)",
        (id_hash(session_id), principal.key_id),
    )
    return Session(session_id, csrf_token(secret, session_id), principal)


def resume(
    conn: psycopg.Connection,
    session_id: bytes,
    *,
    secret: bytes,
    idle_seconds: float,
    seen: bool = True,
) -> Session | None:
    """The session `session_id`, seen now unless `seen` is False (a page refreshing itself
    is not the operator at work: it must not keep an idle session alive); None when it does
    not exist, was idle longer than `idle_seconds`, or its key has been revoked since."""
    row = conn.execute(
        "UPDATE dashboard_sessions s"
        " SET last_seen_at = CASE WHEN %s THEN now() ELSE s.last_seen_at END FROM api_keys k"
        " WHERE s.id_hash = %s AND k.id = s.key_id AND k.revoked_at IS NULL"
        " AND k.user_id IS NULL AND s.last_seen_at >= now() - make_interval(secs => %s)"
        " RETURNING k.id, k.read_only",
        (seen, id_hash(session_id), idle_seconds),
    ).fetchone()
    if row is None:
        return None
    principal = Principal(user_id=None, key_id=row[0], read_only=row[1])
    return Session(session_id, csrf_token(secret, session_id), principal)


def end(conn: psycopg.Connection, session_id: bytes) -> None:
    """Log out: the session is gone, whoever still holds its cookie."""
    conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = %s", (id_hash(session_id),))


def tokens_match(expected: str, sent: object) -> bool:
    """Whether `sent` is the token `expected` (compared in constant time). Anything else is
    False, never an error: None, an empty or non-ASCII string, a list of repeated values."""
    return (
        isinstance(sent, str)
        and sent.isascii()
        and bool(sent)
        and hmac.compare_digest(sent.encode(), expected.encode())
    )


def csrf_matches(session: Session, sent: object) -> bool:
    """Whether a form or header echoed this session's CSRF token (see `tokens_match`)."""
    return tokens_match(session.csrf_token, sent)
