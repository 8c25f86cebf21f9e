"""The dashboard against an attacker: a copy of the database opens no session, malformed CSRF
tokens and cookies are refused (never a 500), unknown filter parameters are refused by name,
every answer carries the browser's protective headers, and cancelling asks first."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from falcon.testing import TestClient

from shared.ledger import sessions
from tests.dashboard import COOKIE, LOGIN_COOKIE, Browser, dead_lettered
from tests.helpers import transfer_row
from tests.integration.test_dashboard import dash, keys, sent_ids  # noqa: F401 (fixtures)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- A copy of the database opens no session ------------------------------------------


def _copy(db: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    """Every row of `table`, as someone with a copy of the database reads it."""
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(psycopg.sql.SQL("SELECT * FROM {}").format(psycopg.sql.Identifier(table)))
        return cur.fetchall()


def _stolen_values(rows: list[dict[str, Any]]) -> tuple[list[bytes], list[str]]:
    """The bytes and text values of `rows`, and the text forms a thief would try of each."""
    raw = [bytes(v) for row in rows for v in row.values() if isinstance(v, bytes | memoryview)]
    text = [v for row in rows for v in row.values() if isinstance(v, str) and v]
    text += [_b64(v) for v in raw] + [v.hex() for v in raw]
    return raw, text


def test_a_copy_of_the_sessions_and_the_signing_secret_opens_no_session(
    dash: TestClient,  # noqa: F811
    db: psycopg.Connection,
    keys: dict[str, str],  # noqa: F811
    sent_ids: list[int],  # noqa: F811
) -> None:
    """What a thief holding a copy of `dashboard_sessions`, `service_secrets` and `api_keys`
    (taken while an operator is logged in) can try: stored values as the cookie, cookies
    signed with the stored secret over every stored value, stored or derived values as the
    CSRF token next to the victim's own cookie. None loads a page or cancels a transfer."""
    victim = Browser(dash, keys["operator"])
    transfer = dead_lettered(db, error=f"theft {uuid.uuid4().hex}")
    assert victim.get("/dashboard").status_code == 200

    rows = _copy(db, "dashboard_sessions") + _copy(db, "api_keys")
    secrets_rows = _copy(db, "service_secrets")
    assert secrets_rows, "the signing secret is kept in the database (the hard case)"
    signing = [bytes(r["value"]) for r in secrets_rows]
    raw, text = _stolen_values(rows)
    assert raw and text

    # Nothing stored is the session id or the CSRF token the victim's browser holds.
    session_id = sessions.unsign(signing[0], victim.cookie)
    assert session_id is not None
    for value in raw:
        assert session_id not in value
    for value in text:
        assert victim.csrf not in value and _b64(session_id) not in value

    cookies = [*text]
    for secret in signing:
        cookies += [sessions.sign(secret, v) for v in raw if len(v) == 32]
        cookies += [sessions.sign(secret, hashlib.sha256(v).digest()) for v in raw]
    assert len(cookies) > 10
    for cookie in cookies:
        page = dash.simulate_get("/dashboard", cookies={COOKIE: cookie})
        assert page.status_code == 303, cookie
        api = dash.simulate_get("/dashboard/api/overview", cookies={COOKIE: cookie})
        assert api.status_code == 401, cookie

    tokens = [*text]
    for secret in signing:
        tokens += [sessions.csrf_token(secret, v) for v in raw]
        tokens += [_b64(hmac.new(secret, v, hashlib.sha256).digest()) for v in raw]
    for token in tokens:
        form = victim.post(f"/dashboard/transfers/{transfer}/cancel", csrf=token)
        assert form.status_code == 403, token
        api = dash.simulate_post(
            f"/dashboard/api/transfers/{transfer}/cancel",
            cookies=victim.cookies,
            headers={"X-CSRF-Token": token},
        )
        assert api.status_code == 403, token
    assert transfer_row(db, transfer)["dead_lettered_at"] is not None
    assert sent_ids == []

    # The victim's own session still works: the thief changed nothing.
    assert victim.post(f"/dashboard/transfers/{transfer}/cancel").status_code == 303
    assert transfer_row(db, transfer)["failure_code"] == "cancelled_by_operator"
