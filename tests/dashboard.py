"""What the dashboard's tests share: log in through the real form, read CSRF tokens, make
dead-lettered transfers in bulk, and webhook endpoints with deliveries in any state."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence

import psycopg
from falcon.testing import Result, TestClient

from shared.ledger import dead_letters, sessions
from tests.helpers import make_account, make_user, submit

COOKIE = "settle_dashboard"
LOGIN_COOKIE = "settle_dashboard_login"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: Result) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(page.text)
    assert found, f"no CSRF token on the page: {page.text[:300]}"
    return found.group(1)


def log_in(client: TestClient, key: str) -> Result:
    """Submit the login form with `key` as a browser would (login cookie and its token)."""
    form = client.simulate_get("/dashboard/login")
    token = form.cookies[LOGIN_COOKIE].value
    return client.simulate_post(
        "/dashboard/login",
        body=f"key={key}&csrf={token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        cookies={LOGIN_COOKIE: token},
    )


class Browser:
    """A logged-in session: its cookie, and its CSRF token."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        answer = log_in(client, key)
        assert answer.status_code == 303, answer.text
        self.cookie = answer.cookies[COOKIE].value
        self.csrf = csrf_of(self.get("/dashboard/actions"))

    @property
    def cookies(self) -> dict[str, str]:
        return {COOKIE: self.cookie}

    @property
    def id_hash(self) -> bytes:
        """What `dashboard_sessions` keeps of this session (its `id_hash`)."""
        raw = self.cookie.partition(".")[0]
        return sessions.id_hash(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))

    def get(self, path: str, **kw: object) -> Result:
        return self.client.simulate_get(path, cookies=self.cookies, **kw)  # type: ignore[arg-type]

    def post(
        self, path: str, fields: dict[str, object] | None = None, *, csrf: str | None = ""
    ) -> Result:
        """POST a form; the session's CSRF token unless `csrf` is given (None: none sent)."""
        data = dict(fields or {})
        token = self.csrf if csrf == "" else csrf
        if token is not None:
            data["csrf"] = token
        from urllib.parse import urlencode

        return self.client.simulate_post(
            path,
            body=urlencode(data),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            cookies=self.cookies,
        )


def dead_lettered(conn: psycopg.Connection, *, amount: int = 100, error: str = "boom") -> int:
    """A pending transfer out of a fresh treasury account, dead-lettered with `error`."""
    source, target = make_account(conn, treasury=True), make_account(conn)
    transfer = submit(conn, source, target, amount)
    assert dead_letters.mark(conn, transfer, error)
    return transfer


def many_dead_lettered(conn: psycopg.Connection, count: int, *, error: str) -> list[int]:
    """`count` dead-lettered transfers between two fresh accounts (the first a treasury), made in
    one statement."""
    source, target = make_account(conn, treasury=True), make_account(conn)
    rows = conn.execute(
        "INSERT INTO transfers (idempotency_key, request_hash, from_account_id, to_account_id,"
        " amount, currency, idempotency_scope, attempts, last_error, dead_lettered_at)"
        " SELECT %s || g, 'bulk', %s, %s, 1 + g, 'EUR', 'operator', 11, %s, now()"
        " FROM generate_series(1, %s) g RETURNING id",
        (uuid.uuid4().hex, source, target, error, count),
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def webhook_endpoint(conn: psycopg.Connection, url: str = "http://127.0.0.1:9/hook") -> int:
    """A live endpoint of a fresh user, written as the table holds it (its secret material is
    not used here: nothing is delivered)."""
    row = conn.execute(
        "INSERT INTO webhook_endpoints (user_id, url, event_types, secret_salt, secret_key_check)"
        " VALUES (%s, %s, ARRAY['transfer.settled', 'transfer.failed'], '\\x00', '\\x00')"
        " RETURNING id",
        (make_user(conn), url),
    ).fetchone()
    assert row is not None
    return int(row[0])


def webhook_delivery(
    conn: psycopg.Connection,
    endpoint: int,
    status: str,
    answers: Sequence[tuple[int | None, str | None]] = (),
) -> int:
    """A delivery to `endpoint` in `status`, with one attempt per (status code, error) of
    `answers`, as the delivery workers record them; a finished one's window is over. Its
    next attempt is an hour ahead and a message is marked sent, so that a retry's changes
    show."""
    last_code, last_error = answers[-1] if answers else (None, None)
    row = conn.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status,"
        " attempts, last_status_code, last_error, next_attempt_at, retry_until, finished_at,"
        " enqueued_at)"
        " VALUES (%(e)s, %(event)s, 'transfer.settled', %(body)s, %(status)s, %(n)s, %(code)s,"
        "  %(error)s, now() + interval '1 hour',"
        "  CASE WHEN %(status)s = 'pending' THEN now() + interval '3 days'"
        "   ELSE now() - interval '1 minute' END,"
        "  CASE WHEN %(status)s = 'pending' THEN NULL ELSE now() END, now() - interval '1 hour')"
        " RETURNING id",
        {
            "e": endpoint,
            "event": uuid.uuid4().int % 2**62,
            "body": '{"type": "transfer.settled"}',
            "status": status,
            "n": len(answers),
            "code": last_code,
            "error": last_error,
        },
    ).fetchone()
    assert row is not None
    for code, error in answers:
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error)"
            " VALUES (%s, %s, 12, %s)",
            (row[0], code, error),
        )
    return int(row[0])
