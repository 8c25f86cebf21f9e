"""Bad input of every kind, on every route that takes a body or an id: a 4xx with a stable
code, the API's error shape, and nothing written (rows in every table are counted before and
after, and no transfer message is sent)."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import falcon.testing
import psycopg
import pytest
from falcon.testing import TestClient

from shared.config import Settings
from shared.ledger.commands import MAX_DEPTH
from shared.ledger.money import BIGINT_MAX, MAX_AMOUNT
from tests.helpers import (
    CountingInput,
    fund,
    make_account,
    make_user,
    new_key,
    raw_post,
    row_counts,
    unique_email,
)


@dataclass(frozen=True)
class World:
    """Rows the bad requests point at, made fresh for each case."""

    user: int
    email: str
    eur: int  # funded
    eur2: int
    usd: int
    missing: int  # an id no account or user has
    max_body_bytes: int


@dataclass(frozen=True)
class Raw:
    """A JSON literal spliced into a body as is (for what json.dumps would not write)."""

    text: str


OMIT = object()
Value = object  # a JSON value, a Raw literal, OMIT, or a function of the World giving one
Body = Callable[[World], bytes]


def _resolve(value: Value, world: World) -> Value:
    return value(world) if callable(value) else value


def members(world: World, fields: dict[str, Value]) -> bytes:
    parts = []
    for name, value in fields.items():
        value = _resolve(value, world)
        if value is OMIT:
            continue
        literal = value.text if isinstance(value, Raw) else json.dumps(value)
        parts.append(f"{json.dumps(name)}: {literal}")
    return ("{" + ", ".join(parts) + "}").encode()


def transfer(**changes: Value) -> Body:
    """A valid transfer between the two EUR accounts, with `changes`."""
    return lambda w: members(
        w, {"from_account_id": w.eur, "to_account_id": w.eur2, "amount": 100, **changes}
    )


def user(**changes: Value) -> Body:
    """A valid new user with a fresh email, with `changes`."""
    return lambda w: members(w, {"email": unique_email(), "name": "Ada", **changes})


def account(**changes: Value) -> Body:
    """A valid new EUR account for the world's user, with `changes`."""
    return lambda w: members(w, {"user_id": w.user, "currency": "EUR", **changes})


def raw(text: str | bytes) -> Body:
    data = text.encode() if isinstance(text, str) else text
    return lambda w: data


def oversized(body: Body) -> Body:
    """`body`, still valid JSON, padded with whitespace past the size limit."""
    return lambda w: body(w) + b" " * w.max_body_bytes


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


FRESH = "fresh key"


@dataclass(frozen=True)
class Case:
    path: str
    body: Body
    status: int
    code: str
    content_type: str | None = "application/json"
    idempotency_key: str | None = FRESH  # sent to /transfers only
    content_length: bool = True


T, U, A = "/transfers", "/users", "/accounts"
JSON_400, REQ_400 = (400, "invalid_json"), (400, "invalid_request")

CASES = {
    # --- POST /transfers ------------------------------------------------------------------
    "transfer-malformed-json": Case(T, raw('{"amount": '), *JSON_400),
    "transfer-empty-body": Case(T, raw(""), *JSON_400),
    "transfer-not-utf8": Case(T, raw(b'{"amount": 100, "x": "\xff"}'), *JSON_400),
    "transfer-array-body": Case(T, raw("[]"), *REQ_400),
    "transfer-null-body": Case(T, raw("null"), *REQ_400),
    "transfer-nan-amount": Case(T, transfer(amount=Raw("NaN")), *JSON_400),
    "transfer-infinite-amount": Case(T, transfer(amount=Raw("-Infinity")), *JSON_400),
    "transfer-float-amount": Case(T, transfer(amount=Raw("100.0")), *REQ_400),
    "transfer-exponent-amount": Case(T, transfer(amount=Raw("1e2")), *REQ_400),
    "transfer-huge-float-amount": Case(T, transfer(amount=Raw("1e999")), *REQ_400),
    "transfer-string-amount": Case(T, transfer(amount="100"), *REQ_400),
    "transfer-boolean-amount": Case(T, transfer(amount=True), *REQ_400),
    "transfer-null-amount": Case(T, transfer(amount=None), *REQ_400),
    "transfer-list-amount": Case(T, transfer(amount=[100]), *REQ_400),
    "transfer-zero-amount": Case(T, transfer(amount=0), *REQ_400),
    "transfer-negative-amount": Case(T, transfer(amount=-100), *REQ_400),
    "transfer-amount-over-maximum": Case(T, transfer(amount=MAX_AMOUNT + 1), *REQ_400),
    "transfer-amount-beyond-bigint": Case(T, transfer(amount=BIGINT_MAX + 1), *REQ_400),
    "transfer-amount-far-beyond-bigint": Case(T, transfer(amount=10**40), *REQ_400),
    "transfer-amount-below-bigint": Case(T, transfer(amount=-BIGINT_MAX - 2), *REQ_400),
    "transfer-amount-of-5000-digits": Case(T, transfer(amount=Raw("9" * 5000)), *JSON_400),
    "transfer-string-account-id": Case(T, transfer(from_account_id=lambda w: str(w.eur)), *REQ_400),
    "transfer-float-account-id": Case(
        T, transfer(to_account_id=lambda w: Raw(f"{w.eur2}.0")), *REQ_400
    ),
    "transfer-zero-account-id": Case(T, transfer(to_account_id=0), *REQ_400),
    "transfer-account-id-beyond-bigint": Case(
        T, transfer(from_account_id=BIGINT_MAX + 1), *REQ_400
    ),
    "transfer-lower-case-currency": Case(T, transfer(currency="eur"), *REQ_400),
    "transfer-numeric-currency": Case(T, transfer(currency=978), *REQ_400),
    "transfer-unknown-field": Case(T, transfer(memo="rent"), *REQ_400),
    "transfer-missing-amount": Case(T, transfer(amount=OMIT), *REQ_400),
    "transfer-unknown-field-named-by-a-lone-surrogate": Case(
        T, lambda w: transfer()(w)[:-1] + b', "\\ud800": 1}', *REQ_400
    ),
    "transfer-repeated-amount": Case(
        T,
        lambda w: transfer()(w).replace(b'"amount": 100', b'"amount": 1, "amount": 100'),
        *JSON_400,
    ),
    "transfer-nested-too-deep": Case(T, transfer(amount=nested(MAX_DEPTH + 1)), *JSON_400),
    "transfer-nested-very-deep": Case(T, transfer(amount=nested(5000)), *JSON_400),
    "transfer-same-account": Case(T, transfer(to_account_id=lambda w: w.eur), 422, "same_account"),
    "transfer-unknown-from-account": Case(
        T, transfer(from_account_id=lambda w: w.missing), 422, "account_not_found"
    ),
    "transfer-unknown-to-account": Case(
        T, transfer(to_account_id=lambda w: w.missing), 422, "account_not_found"
    ),
    "transfer-currency-mismatch": Case(
        T, transfer(to_account_id=lambda w: w.usd), 422, "currency_mismatch"
    ),
    "transfer-stated-currency-mismatch": Case(
        T, transfer(currency="USD"), 422, "currency_mismatch"
    ),
    "transfer-body-too-large": Case(T, oversized(transfer()), 413, "body_too_large"),
    "transfer-body-too-large-without-content-length": Case(
        T, oversized(transfer()), 413, "body_too_large", content_length=False
    ),
    "transfer-text-plain": Case(
        T, transfer(), 415, "unsupported_media_type", content_type="text/plain"
    ),
    "transfer-form-encoded": Case(
        T,
        raw("amount=100"),
        415,
        "unsupported_media_type",
        content_type="application/x-www-form-urlencoded",
    ),
    "transfer-no-content-type": Case(
        T, transfer(), 415, "unsupported_media_type", content_type=None
    ),
    "transfer-missing-idempotency-key": Case(
        T, transfer(), 400, "idempotency_key_missing", idempotency_key=None
    ),
    "transfer-blank-idempotency-key": Case(
        T, transfer(), 400, "idempotency_key_missing", idempotency_key="   "
    ),
    "transfer-idempotency-key-too-long": Case(T, transfer(), *REQ_400, idempotency_key="k" * 256),
    "transfer-idempotency-key-with-spaces": Case(T, transfer(), *REQ_400, idempotency_key="my key"),
    # --- POST /users ----------------------------------------------------------------------
    "user-malformed-json": Case(U, raw('{"email": "a@example.com",'), *JSON_400),
    "user-not-utf8": Case(U, raw(b'{"email": "a@example.com", "name": "Andr\xe9"}'), *JSON_400),
    "user-array-body": Case(U, raw('["a@example.com", "Ada"]'), *REQ_400),
    "user-numeric-email": Case(U, user(email=5), *REQ_400),
    "user-invalid-email": Case(U, user(email="not-an-email"), *REQ_400),
    "user-empty-name": Case(U, user(name=""), *REQ_400),
    "user-blank-name": Case(U, user(name="   "), *REQ_400),
    "user-name-too-long": Case(U, user(name="x" * 201), *REQ_400),
    "user-name-with-nul": Case(U, user(name="Ada\x00"), *REQ_400),
    "user-email-with-nul": Case(U, user(email="ada\x00@example.com"), *REQ_400),
    "user-name-with-lone-surrogate": Case(U, user(name=Raw('"Ada \\ud800"')), *REQ_400),
    "user-email-with-lone-surrogate": Case(U, user(email=Raw('"\\udfff@example.com"')), *REQ_400),
    "user-unknown-field": Case(U, user(admin=True), *REQ_400),
    "user-missing-name": Case(U, user(name=OMIT), *REQ_400),
    "user-repeated-name": Case(
        U, lambda w: user()(w).replace(b'"name"', b'"name": "Eve", "name"'), *JSON_400
    ),
    "user-nested-too-deep": Case(U, user(name=nested(MAX_DEPTH + 1)), *JSON_400),
    "user-huge-integer": Case(U, user(name=Raw("1" * 5000)), *JSON_400),
    "user-body-too-large": Case(U, oversized(user()), 413, "body_too_large"),
    "user-body-too-large-without-content-length": Case(
        U, oversized(user()), 413, "body_too_large", content_length=False
    ),
    "user-text-plain": Case(U, user(), 415, "unsupported_media_type", content_type="text/plain"),
    "user-email-taken": Case(U, user(email=lambda w: w.email.upper()), 409, "email_taken"),
    # --- POST /accounts -------------------------------------------------------------------
    "account-malformed-json": Case(A, raw("{user_id: 1}"), *JSON_400),
    "account-string-user-id": Case(A, account(user_id=lambda w: str(w.user)), *REQ_400),
    "account-float-user-id": Case(A, account(user_id=lambda w: Raw(f"{w.user}.0")), *REQ_400),
    "account-boolean-user-id": Case(A, account(user_id=True), *REQ_400),
    "account-user-id-beyond-bigint": Case(A, account(user_id=BIGINT_MAX + 1), *REQ_400),
    "account-lower-case-currency": Case(A, account(currency="eur"), *REQ_400),
    "account-four-letter-currency": Case(A, account(currency="EURO"), *REQ_400),
    "account-null-currency": Case(A, account(currency=None), *REQ_400),
    "account-string-allow-negative": Case(A, account(allow_negative_balance="true"), *REQ_400),
    "account-numeric-allow-negative": Case(A, account(allow_negative_balance=1), *REQ_400),
    "account-unknown-field": Case(A, account(balance=1_000_000), *REQ_400),
    "account-missing-currency": Case(A, account(currency=OMIT), *REQ_400),
    "account-nested-too-deep": Case(A, account(currency=nested(MAX_DEPTH + 1)), *JSON_400),
    "account-unknown-user": Case(A, account(user_id=lambda w: w.missing), 404, "user_not_found"),
    "account-body-too-large": Case(A, oversized(account()), 413, "body_too_large"),
    "account-body-too-large-without-content-length": Case(
        A, oversized(account()), 413, "body_too_large", content_length=False
    ),
    "account-text-plain": Case(
        A, account(), 415, "unsupported_media_type", content_type="text/plain"
    ),
}


@pytest.fixture
def world(db: psycopg.Connection, settings: Settings) -> World:
    owner = make_user(db)
    email = db.execute("SELECT email FROM users WHERE id = %s", (owner,)).fetchone()
    assert email is not None
    treasury = make_account(db, treasury=True)
    eur, eur2 = make_account(db, user_id=owner), make_account(db, user_id=owner)
    fund(db, treasury, eur, 10_000)
    usd = make_account(db, currency="USD", user_id=owner)
    return World(
        user=owner,
        email=email[0],
        eur=eur,
        eur2=eur2,
        usd=usd,
        missing=max(owner, usd) + 1_000_000,
        max_body_bytes=settings.max_body_bytes,
    )


def send(client: TestClient, case: Case, world: World) -> falcon.testing.Result:
    body = case.body(world)
    headers = {}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    if case.path == T and case.idempotency_key is not None:
        headers["Idempotency-Key"] = (
            new_key() if case.idempotency_key == FRESH else case.idempotency_key
        )
    if case.content_length:
        return client.simulate_post(case.path, body=body, headers=headers)
    # As a server does for a chunked body: no Content-Length, an input that ends at EOF.
    environ = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    return client.simulate_post(case.path, headers=headers, extras=environ)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_answers_a_4xx_with_a_stable_code_and_changes_nothing(
    client: TestClient, db: psycopg.Connection, sent: list[int], world: World, case: Case
) -> None:
    before, sends = row_counts(db), len(sent)
    resp = send(client, case, world)
    assert (resp.status_code, resp.json["error"]["code"]) == (case.status, case.code)
    assert set(resp.json) == {"error"}
    assert set(resp.json["error"]) == {"code", "message"}
    assert isinstance(resp.json["error"]["message"], str) and resp.json["error"]["message"]
    assert row_counts(db) == before
    assert len(sent) == sends


VALID = {
    "transfer": (Case(T, transfer(), 202, ""), "transfers"),
    "user": (Case(U, user(), 201, ""), "users"),
    "account": (Case(A, account(), 201, ""), "accounts"),
}


@pytest.mark.parametrize("content_length", [True, False], ids=["with", "without"])
@pytest.mark.parametrize(("case", "table"), VALID.values(), ids=VALID.keys())
def test_the_valid_request_each_bad_case_departs_from_is_accepted_with_or_without_length(
    client: TestClient,
    db: psycopg.Connection,
    world: World,
    case: Case,
    table: str,
    content_length: bool,
) -> None:
    before = row_counts(db)
    resp = send(client, dataclasses.replace(case, content_length=content_length), world)
    assert resp.status_code == case.status, resp.text
    assert row_counts(db)[table] == before[table] + 1


def test_a_body_of_exactly_the_size_limit_is_accepted(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    body = user()(world)
    padded = body + b" " * (world.max_body_bytes - len(body))
    resp = send(client, Case(U, raw(padded), 201, ""), world)
    assert len(padded) == world.max_body_bytes
    assert resp.status_code == 201, resp.text


# --- Routing and path ids ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/users/1/accounts", "/transfers/1/entries", "/"])
def test_an_unknown_route_answers_404_in_the_error_shape(client: TestClient, path: str) -> None:
    resp = client.simulate_get(path)
    assert resp.status_code == 404
    assert resp.json == {"error": {"code": "not_found", "message": resp.json["error"]["message"]}}
    assert resp.json["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/users/1"), ("PUT", "/transfers"), ("PUT", "/accounts/1"), ("POST", "/healthz")],
)
def test_an_unsupported_method_answers_405_in_the_error_shape(
    client: TestClient, db: psycopg.Connection, method: str, path: str
) -> None:
    before = row_counts(db)
    resp = client.simulate_request(method, path)
    assert resp.status_code == 405
    assert resp.json["error"]["code"] == "method_not_allowed"
    assert "allow" in resp.headers
    assert row_counts(db) == before


ROUTES_BY_ID = [
    ("/users/{}", "user_not_found"),
    ("/accounts/{}", "account_not_found"),
    ("/accounts/{}/entries", "account_not_found"),
    ("/transfers/{}", "transfer_not_found"),
]
IDS_THAT_NAME_NO_ROW = [
    "abc",
    "0",
    "-1",
    "1.5",
    "1e3",
    "%20",
    "%00",
    "١",  # an Arabic-Indic digit: str.isdigit() says yes, but it is no id
    str(BIGINT_MAX + 1),
    "9" * 19,
    "9" * 40,
    "9" * 5000,
]


@pytest.mark.parametrize("raw_id", IDS_THAT_NAME_NO_ROW)
@pytest.mark.parametrize(("template", "code"), ROUTES_BY_ID, ids=[r for r, _ in ROUTES_BY_ID])
def test_a_path_id_that_cannot_name_a_row_answers_404_never_500(
    client: TestClient, template: str, code: str, raw_id: str
) -> None:
    resp = client.simulate_get(template.format(raw_id))
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == code


@pytest.mark.parametrize("content_length", ["abc", "-1", "1e3"])
def test_a_content_length_that_is_not_a_count_answers_400_invalid_request(
    client: TestClient, db: psycopg.Connection, world: World, content_length: str, operator_key: str
) -> None:
    # TestClient validates the environ with wsgiref's linter, which refuses such a header
    # before the app sees it; a WSGI server may pass it through, so call the app directly.
    environ = falcon.testing.create_environ(
        method="POST",
        path="/users",
        body=user()(world),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {operator_key}"},
    )
    environ["CONTENT_LENGTH"] = content_length
    start_response = falcon.testing.StartResponseMock()
    before = row_counts(db)
    body = b"".join(client.app(environ, start_response))
    assert start_response.status == "400 Bad Request"
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert row_counts(db) == before


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", [T, U, A])
def test_a_body_over_the_limit_is_refused_413_before_it_is_read_whole(
    client: TestClient,
    db: psycopg.Connection,
    world: World,
    operator_key: str,
    path: str,
    declared: bool,
) -> None:
    size = world.max_body_bytes * 64
    stream = CountingInput(b"[" + b" " * (size - 2) + b"]")
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {operator_key}",
        "Idempotency-Key": new_key(),
    }
    before = row_counts(db)
    status, answer = raw_post(client, path, stream, size if declared else None, headers)
    assert (status, answer["error"]["code"]) == ("413 Content Too Large", "body_too_large")
    # Declared too large: not a byte read. Undeclared: read only one byte past the limit.
    assert stream.bytes_read == (0 if declared else world.max_body_bytes + 1)
    assert row_counts(db) == before
