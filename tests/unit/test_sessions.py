"""Dashboard session cookies: signed ids that cannot be forged or altered."""

from __future__ import annotations

import secrets

from shared.ledger import sessions
from shared.ledger.auth import Principal
from shared.ledger.sessions import Session, csrf_matches


def test_a_signed_session_id_reads_back_with_the_same_secret_only() -> None:
    secret, session_id = secrets.token_bytes(32), secrets.token_bytes(32)
    cookie = sessions.sign(secret, session_id)
    assert sessions.unsign(secret, cookie) == session_id
    assert sessions.unsign(secrets.token_bytes(32), cookie) is None


def test_an_altered_or_malformed_cookie_names_no_session() -> None:
    secret = secrets.token_bytes(32)
    cookie = sessions.sign(secret, secrets.token_bytes(32))
    raw_id, _, mac = cookie.partition(".")
    other_id = sessions.sign(secret, secrets.token_bytes(32)).partition(".")[0]
    for bad in (f"{other_id}.{mac}", raw_id, f"{raw_id}.", "", "...", "a.b", cookie + "x"):
        assert sessions.unsign(secret, bad) is None, bad


def test_the_csrf_token_must_be_the_sessions_own() -> None:
    session = Session(b"\x00" * 32, "token-a", Principal(user_id=None, key_id=1))
    assert csrf_matches(session, "token-a")
    assert not csrf_matches(session, "token-b")
    assert not csrf_matches(session, None)
    assert not csrf_matches(session, "")


def test_the_csrf_token_is_derived_from_the_session_id_with_the_secret() -> None:
    secret, session_id = secrets.token_bytes(32), secrets.token_bytes(32)
    token = sessions.csrf_token(secret, session_id)
    assert token == sessions.csrf_token(secret, session_id)
    assert token != sessions.csrf_token(secrets.token_bytes(32), session_id)
    assert token != sessions.csrf_token(secret, secrets.token_bytes(32))
    assert sessions.id_hash(session_id) != session_id and len(sessions.id_hash(session_id)) == 32
