"""API keys and who may do what: every route against every kind of caller, and the rules
behind the matrix (hashing, revocation, ownership, 404 rather than 403, idempotency scopes)."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import falcon.testing
import psycopg
import pytest
from falcon.testing import TestClient
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import auth
from shared.webhooks import endpoints
from tests.contract import documented
from tests.dashboard import webhook_delivery
from tests.helpers import (
    CountingInput,
    fund,
    make_account,
    make_user,
    raw_post,
    row_counts,
    submit,
    unique_email,
)
from web.app import create_app


@dataclass(frozen=True)
class World:
    """Two users with accounts and keys; `owner` is the one whose resources are asked for."""

    owner: int
    owner_account: int  # funded
    owner_second_account: int
    funding: int  # the transfer from the treasury to owner_account
    other: int
    other_account: int
    keys: dict[str, str | None]  # caller kind -> the key it sends (None: no header)
    endpoint: int  # a webhook endpoint of owner's
    delivery: int  # a failed delivery to it
    hook_url: str  # where every endpoint made for this world points (nothing listens)


CALLERS = [
    "no key",
    "wrong key",
    "revoked key",
    "other user's key",
    "own key",
    "operator key",
    "read-only key",
]


@pytest.fixture
def world(db: psycopg.Connection, operator_key: str, settings: Settings) -> Iterator[World]:
    treasury = make_account(db, treasury=True)
    owner, other = make_user(db, "Owner"), make_user(db, "Other")
    owner_account = make_account(db, user_id=owner)
    owner_second = make_account(db, user_id=owner)
    other_account = make_account(db, user_id=other)
    funding = fund(db, treasury, owner_account, 10_000)
    fund(db, treasury, other_account, 10_000)
    revoked = auth.create_key(db, user_id=owner)
    assert auth.revoke_key(db, revoked.id)
    keys = {
        "no key": None,
        "wrong key": auth.generate_key(),  # well formed, never stored
        "revoked key": revoked.key,
        "other user's key": auth.create_key(db, user_id=other).key,
        "own key": auth.create_key(db, user_id=owner).key,
        "operator key": operator_key,
        "read-only key": auth.create_key(db, user_id=None, read_only=True).key,
    }
    # Port 9 (discard) on this host: a delivery made to it goes nowhere.
    hook_url = f"http://127.0.0.1:9/auth-matrix/{uuid.uuid4().hex}"
    endpoint = endpoints.create_endpoint(
        db,
        endpoints.endpoint_request({"url": hook_url, "event_types": ["transfer.settled"]}),
        by=auth.Principal(user_id=owner),
        secret_key=settings.secret_key,
    )
    delivery = webhook_delivery(db, int(endpoint["id"]), "failed", [(500, "HTTP 500")])
    yield World(
        owner,
        owner_account,
        owner_second,
        funding,
        other,
        other_account,
        keys,
        int(endpoint["id"]),
        delivery,
        hook_url,
    )
    # The suite's database is shared: an operator's endpoint would receive every event, and
    # operators may have only so many.
    db.execute(
        "UPDATE webhook_endpoints SET deleted_at = now() WHERE url LIKE %s AND deleted_at IS NULL",
        (hook_url + "%",),
    )


def call(
    client: TestClient,
    method: str,
    path: str,
    key: str | None,
    headers: dict[str, str] | None = None,
    **kwargs: object,
) -> falcon.testing.Result:
    """A request with `key` as its bearer token, or with no usable Authorization header."""
    # The client sends an operator key by default; an empty value stands for no header.
    auth_header = {"Authorization": "" if key is None else f"Bearer {key}"}
    return client.simulate_request(
        method, path, headers={**(headers or {}), **auth_header}, **kwargs
    )


Request = Callable[[World], tuple[str, dict[str, object]]]


def get(template: str, field: str) -> Request:
    return lambda w: (template.format(getattr(w, field)), {})


def post_transfer(w: World) -> tuple[str, dict[str, object]]:
    body = {"from_account_id": w.owner_account, "to_account_id": w.other_account, "amount": 10}
    return "/transfers", {"json": body, "headers": {"Idempotency-Key": uuid.uuid4().hex}}


def post_user(w: World) -> tuple[str, dict[str, object]]:
    return "/users", {"json": {"email": unique_email(), "name": "New"}}


def post_account(w: World) -> tuple[str, dict[str, object]]:
    return "/accounts", {"json": {"user_id": w.owner, "currency": "EUR"}}


def dashboard_post(
    template: str, body: Callable[[World], dict[str, object]] | None = None
) -> Request:
    """A POST to the dashboard's JSON twin naming the funding transfer, with `body(w)`."""
    return lambda w: (template.format(w.funding), {} if body is None else {"json": body(w)})


def post_batch(w: World) -> tuple[str, dict[str, object]]:
    """An atomic batch of one transfer out of the owner's account: another user's key has
    it refused whole (422 batch_refused), so nothing is recorded."""
    item = {
        "from_account_id": w.owner_account,
        "to_account_id": w.other_account,
        "amount": 10,
        "idempotency_key": uuid.uuid4().hex,
    }
    return "/transfers/batch", {"json": {"transfers": [item], "atomic": True}}


def post_endpoint(w: World) -> tuple[str, dict[str, object]]:
    body = {"url": f"{w.hook_url}/new", "event_types": ["transfer.failed"]}
    return "/webhook-endpoints", {"json": body}


def hook(template: str) -> Request:
    """A request to `template` naming the owner's webhook endpoint ({e}) and its failed
    delivery ({d})."""
    return lambda w: (template.format(e=w.endpoint, d=w.delivery), {})


def public(path: str) -> Request:
    return lambda w: (path, {})


def at(path: str) -> Request:
    """A GET of `path` as it is: what it answers depends on the key alone."""
    return lambda w: (path, {})


UNAUTHENTICATED = (401, 401, 401)
#: Who may read what a route shows: a user its own, an operator (read-only or not) all.
READ_OWN = (*UNAUTHENTICATED, 404, 200, 200, 200)
#: Lists answer every key its own share.
LIST_OWN = (*UNAUTHENTICATED, 200, 200, 200, 200)
#: Operators make users and accounts; a read-only operator key changes nothing.
OPERATORS_WRITE = (*UNAUTHENTICATED, 403, 403, 201, 403)
#: The dashboard's JSON twin: operator keys only (a user's key is 403 operator_only); a
#: read-only key reads it and is refused its actions (403 read_only_key).
OPERATORS_READ = (*UNAUTHENTICATED, 403, 403, 200, 200)
OPERATORS_ACT = (*UNAUTHENTICATED, 403, 403, 200, 403)
#: (method, route, how to build the request, statuses for CALLERS in order)
MATRIX: list[tuple[str, str, Request, tuple[int, ...]]] = [
    ("GET", "/users/{user_id}", get("/users/{}", "owner"), READ_OWN),
    ("GET", "/accounts/{account_id}", get("/accounts/{}", "owner_account"), READ_OWN),
    (
        "GET",
        "/accounts/{account_id}/entries",
        get("/accounts/{}/entries", "owner_account"),
        READ_OWN,
    ),
    ("GET", "/transfers/{transfer_id}", get("/transfers/{}", "funding"), READ_OWN),
    ("POST", "/transfers", post_transfer, (*UNAUTHENTICATED, 422, 202, 202, 403)),
    # A batch is refused whole to a read-only key; an atomic one out of another user's
    # account is refused whole too.
    ("POST", "/transfers/batch", post_batch, (*UNAUTHENTICATED, 422, 200, 200, 403)),
    # Lists answer every key its own share (tests/integration/test_listing.py says which).
    ("GET", "/transfers", at("/transfers"), LIST_OWN),
    ("GET", "/accounts", at("/accounts"), LIST_OWN),
    # As the lists: each key its own events (tests/integration/test_events.py says which).
    ("GET", "/events", at("/events"), LIST_OWN),
    # An operator key acts for no user.
    ("GET", "/users/me", at("/users/me"), (*UNAUTHENTICATED, 200, 200, 404, 404)),
    ("POST", "/users", post_user, OPERATORS_WRITE),
    ("POST", "/accounts", post_account, OPERATORS_WRITE),
    # Webhook endpoints: each key its own (an operator's all), another user's answers as one
    # that does not exist (tests/integration/test_webhook_endpoints.py says more).
    ("GET", "/webhook-endpoints", at("/webhook-endpoints"), LIST_OWN),
    ("POST", "/webhook-endpoints", post_endpoint, (*UNAUTHENTICATED, 201, 201, 201, 403)),
    ("GET", "/webhook-endpoints/{endpoint_id}", hook("/webhook-endpoints/{e}"), READ_OWN),
    (
        "DELETE",
        "/webhook-endpoints/{endpoint_id}",
        hook("/webhook-endpoints/{e}"),
        (*UNAUTHENTICATED, 404, 204, 204, 403),
    ),
    (
        "POST",
        "/webhook-endpoints/{endpoint_id}/rotate-secret",
        hook("/webhook-endpoints/{e}/rotate-secret"),
        (*UNAUTHENTICATED, 404, 200, 200, 403),
    ),
    *[
        ("GET", route, get(route.replace("{transfer_id}", "{}"), "funding"), OPERATORS_READ)
        for route in (
            "/dashboard/api/overview",
            "/dashboard/api/transfers",
            "/dashboard/api/transfers/count",
            "/dashboard/api/transfers/{transfer_id}",
            "/dashboard/api/actions",
        )
    ],
    *[
        ("POST", route, dashboard_post(route.replace("{transfer_id}", "{}")), OPERATORS_ACT)
        for route in (
            "/dashboard/api/transfers/{transfer_id}/retry",
            "/dashboard/api/transfers/{transfer_id}/cancel",
        )
    ],
    (
        "POST",
        "/dashboard/api/transfers/retry",
        # A filter nothing else in the suite's database matches: the owner's dead letters.
        dashboard_post(
            "/dashboard/api/transfers/retry",
            lambda w: {"state": "dead", "account": w.owner_account},
        ),
        OPERATORS_ACT,
    ),
    *[
        (
            "GET",
            route,
            hook(route.replace("{endpoint_id}", "{e}").replace("{delivery_id}", "{d}")),
            OPERATORS_READ,
        )  # fmt: skip
        for route in (
            "/dashboard/api/webhooks",
            "/dashboard/api/webhooks/{endpoint_id}",
            "/dashboard/api/webhooks/{endpoint_id}/deliveries",
            "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}",
        )
    ],
    *[
        (
            "POST",
            route,
            hook(route.replace("{endpoint_id}", "{e}").replace("{delivery_id}", "{d}")),
            OPERATORS_ACT,
        )  # fmt: skip
        for route in (
            "/dashboard/api/webhooks/{endpoint_id}/retry",
            "/dashboard/api/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry",
        )
    ],
    ("GET", "/healthz", public("/healthz"), (200,) * 7),
    ("GET", "/readyz", public("/readyz"), (200,) * 7),
    ("GET", "/openapi.json", public("/openapi.json"), (200,) * 7),
    # Not part of the API users see: a user's key is refused like a bad one.
    ("GET", "/metrics", public("/metrics"), (*UNAUTHENTICATED, 401, 401, 200, 200)),
]
CODES = {
    401: {"api_key_missing", "api_key_invalid"},
    403: {"operator_only", "read_only_key"},
    404: {
        "user_not_found",
        "account_not_found",
        "transfer_not_found",
        "webhook_endpoint_not_found",
    },
    422: {"account_not_found", "batch_refused"},
}


def changes(db: psycopg.Connection) -> dict[str, object]:
    """What a refused request must leave as it was: the ledger's rows, the webhook endpoints
    and their secrets, the deliveries' states and the operators' actions."""
    row = db.execute(
        "SELECT (SELECT array_agg((id, deleted_at, secret_salt) ORDER BY id)::text"
        "        FROM webhook_endpoints),"
        "       (SELECT array_agg((id, status, next_attempt_at) ORDER BY id)::text"
        "        FROM webhook_deliveries),"
        "       (SELECT count(*) FROM operator_actions)"
    ).fetchone()
    assert row is not None
    return {**row_counts(db), "webhooks": row}


def test_the_matrix_covers_every_operation_of_the_api() -> None:
    covered: dict[str, set[str]] = {}
    for method, route, _, _ in MATRIX:
        covered.setdefault(route, set()).add(method)
    assert covered == documented()


@pytest.mark.parametrize(
    ("method", "route", "request_for", "expected"),
    MATRIX,
    ids=[f"{method} {route}" for method, route, _, _ in MATRIX],
)
@pytest.mark.parametrize("caller", CALLERS)
def test_each_route_answers_each_kind_of_caller_as_the_rules_say(
    client: TestClient,
    db: psycopg.Connection,
    world: World,
    caller: str,
    method: str,
    route: str,
    request_for: Request,
    expected: tuple[int, ...],
) -> None:
    path, kwargs = request_for(world)
    before = changes(db)
    resp = call(client, method, path, world.keys[caller], **kwargs)
    status = expected[CALLERS.index(caller)]
    assert resp.status_code == status, resp.text
    if status >= 400:
        assert resp.json["error"]["code"] in CODES[status]
        assert changes(db) == before  # a refusal changes nothing
    if status == 401:
        assert resp.headers["www-authenticate"].startswith('Bearer realm="settle"')


def test_a_request_without_a_key_gets_a_bearer_challenge_without_an_error(
    client: TestClient, world: World
) -> None:
    resp = call(client, "GET", f"/users/{world.owner}", None)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "api_key_missing"
    assert resp.headers["www-authenticate"] == 'Bearer realm="settle"'


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer   ",
        "Token settle_x",
        "Bearer not-a-settle-key",
        "Bearer settle_" + "x" * 42,
        "Bearer settle_" + "é" * 43,
    ],
)
def test_a_malformed_authorization_header_answers_401_invalid_token(
    client: TestClient, world: World, header: str
) -> None:
    resp = client.simulate_get(f"/users/{world.owner}", headers={"Authorization": header})
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "api_key_invalid"
    assert resp.headers["www-authenticate"] == 'Bearer realm="settle", error="invalid_token"'


def test_the_bearer_scheme_is_case_insensitive(client: TestClient, world: World) -> None:
    key = world.keys["own key"]
    resp = client.simulate_get(f"/users/{world.owner}", headers={"Authorization": f"bearer {key}"})
    assert resp.status_code == 200


def test_a_key_works_until_it_is_revoked_and_not_a_second_longer(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    created = auth.create_key(db, user_id=world.owner)
    path = f"/accounts/{world.owner_account}"
    assert call(client, "GET", path, created.key).status_code == 200  # looked up, remembered
    assert auth.revoke_key(db, created.id) is True
    row = db.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (created.id,)).fetchone()
    assert row is not None
    # The contract is one second from the revocation, whatever this process remembers.
    time.sleep(max(0.0, row[0].timestamp() + 1.0 - time.time()))
    for _ in range(2):
        resp = call(client, "GET", path, created.key)
        assert resp.status_code == 401
        assert resp.json["error"]["code"] == "api_key_invalid"
    assert auth.revoke_key(db, created.id) is False  # revoking twice changes nothing


class FrozenClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_key_costs_a_read_one_pooled_connection_until_it_expires(
    settings: Settings, pool: ConnectionPool, db: psycopg.Connection, world: World
) -> None:
    clock = FrozenClock()
    keys = auth.PrincipalCache(0.5, clock=clock)
    app = create_app(
        settings, pool=pool, enqueue=lambda _: None, ping_broker=lambda: True, keys=keys
    )
    client = TestClient(app)
    created = auth.create_key(db, user_id=world.owner)
    path = f"/users/{world.owner}"

    def checkouts(times: int) -> tuple[int, list[int]]:
        before = pool.get_stats().get("requests_num", 0)
        statuses = [call(client, "GET", path, created.key).status_code for _ in range(times)]
        return pool.get_stats().get("requests_num", 0) - before, statuses

    assert checkouts(1) == (2, [200])  # the lookup, then the read
    assert checkouts(5) == (5, [200] * 5)  # remembered: the read alone
    assert auth.revoke_key(db, created.id) is True
    assert checkouts(1) == (1, [200])  # still within the half second it is trusted for
    clock.now += 0.5
    assert checkouts(2) == (2, [401, 401])  # looked up again, refused, and not remembered


def test_keys_are_stored_only_as_their_sha256(db: psycopg.Connection, world: World) -> None:
    created = auth.create_key(db, user_id=world.owner, label="hash check")
    assert re.fullmatch(r"settle_[A-Za-z0-9_-]{43}", created.key)
    row = db.execute(
        "SELECT key_hash, key_prefix FROM api_keys WHERE id = %s", (created.id,)
    ).fetchone()
    assert row is not None
    assert bytes(row[0]) == hashlib.sha256(created.key.encode()).digest()
    assert created.key.startswith(row[1]) and len(row[1]) < len(created.key) // 2
    stored = db.execute("SELECT * FROM api_keys WHERE id = %s", (created.id,)).fetchone()
    assert created.key not in repr(stored)


def test_a_key_for_a_user_that_does_not_exist_is_refused(
    db: psycopg.Connection, world: World
) -> None:
    from shared.errors import UserNotFound

    with pytest.raises(UserNotFound):
        auth.create_key(db, user_id=max(world.owner, world.other) + 1_000_000)


# --- 404, not 403: another user's ids answer exactly as ids that name nothing ----------------


def _without_ids(resp: falcon.testing.Result) -> tuple[int, object]:
    return resp.status_code, re.sub(r"\d+", "N", str(resp.json))


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ("/users/{}", "owner"),
        ("/accounts/{}", "owner_account"),
        ("/accounts/{}/entries", "owner_account"),
        ("/transfers/{}", "funding"),
    ],
)
def test_another_users_resource_answers_exactly_like_one_that_does_not_exist(
    client: TestClient, world: World, template: str, field: str
) -> None:
    stranger = world.keys["other user's key"]
    existing = call(client, "GET", template.format(getattr(world, field)), stranger)
    missing = call(client, "GET", template.format(10**15), stranger)
    assert existing.status_code == 404
    assert _without_ids(existing) == _without_ids(missing)


def test_a_transfer_out_of_another_users_account_answers_like_one_from_no_account(
    client: TestClient, db: psycopg.Connection, world: World, sent: list[int]
) -> None:
    stranger = world.keys["other user's key"]
    before, sends = row_counts(db), len(sent)

    def attempt(source: int) -> falcon.testing.Result:
        body = {"from_account_id": source, "to_account_id": world.other_account, "amount": 1}
        return call(
            client,
            "POST",
            "/transfers",
            stranger,
            json=body,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )

    theirs, nothing = attempt(world.owner_account), attempt(10**15)
    assert theirs.status_code == 422
    assert theirs.json["error"]["code"] == "account_not_found"
    assert _without_ids(theirs) == _without_ids(nothing)
    assert (row_counts(db), len(sent)) == (before, sends)


# --- What a user's key may do -----------------------------------------------------------


def test_a_users_key_may_pay_into_another_users_account(
    client: TestClient, world: World, sent: list[int]
) -> None:
    body = {"from_account_id": world.owner_account, "to_account_id": world.other_account}
    resp = call(
        client,
        "POST",
        "/transfers",
        world.keys["own key"],
        json={**body, "amount": 700},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert resp.status_code == 202
    assert resp.json["data"]["from_account_id"] == world.owner_account
    assert sent[-1] == resp.json["data"]["id"]


def test_a_user_sees_a_transfer_it_received_but_not_the_other_accounts_involved(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    incoming = submit(db, world.other_account, world.owner_account, 25)
    owner = world.keys["own key"]
    resp = call(client, "GET", f"/transfers/{incoming}", owner)
    assert resp.status_code == 200
    assert resp.json["data"]["from_account_id"] == world.other_account
    assert call(client, "GET", f"/accounts/{world.other_account}", owner).status_code == 404


def test_a_user_sees_only_its_own_transfers(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    between_others = submit(db, world.other_account, make_account(db), 5)
    resp = call(client, "GET", f"/transfers/{between_others}", world.keys["own key"])
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "transfer_not_found"
    assert call(client, "GET", f"/transfers/{between_others}", None).status_code == 401


@pytest.mark.parametrize("path", ["/users", "/accounts"])
def test_a_users_key_is_refused_403_before_a_byte_of_the_body_is_read(
    client: TestClient, db: psycopg.Connection, world: World, path: str
) -> None:
    stream = CountingInput(b"not json at all")
    headers = {"Content-Type": "text/plain", "Authorization": f"Bearer {world.keys['own key']}"}
    before = row_counts(db)
    status, answer = raw_post(client, path, stream, 15, headers)
    assert (status, answer["error"]["code"]) == ("403 Forbidden", "operator_only")
    assert stream.bytes_read == 0
    assert row_counts(db) == before


@pytest.mark.parametrize("caller", ["no key", "wrong key", "revoked key"])
@pytest.mark.parametrize("path", ["/transfers", "/users", "/accounts"])
def test_an_unauthenticated_request_is_refused_401_before_a_byte_of_the_body_is_read(
    client: TestClient, db: psycopg.Connection, world: World, path: str, caller: str
) -> None:
    stream = CountingInput(b"{" * 100_000)
    key = world.keys[caller]
    headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    before = row_counts(db)
    status, answer = raw_post(client, path, stream, 100_000, headers)
    assert status == "401 Unauthorized"
    assert answer["error"]["code"] in CODES[401]
    assert stream.bytes_read == 0
    assert row_counts(db) == before


def test_an_unknown_path_answers_404_whether_or_not_a_key_is_sent(client: TestClient) -> None:
    for key in (None, auth.generate_key()):
        resp = call(client, "GET", "/nope", key)
        assert resp.status_code == 404
        assert resp.json["error"]["code"] == "not_found"


# --- Idempotency-Keys are scoped to the key holder ----------------------------------------


def _submit(client: TestClient, key: str | None, body: dict[str, int], idem: str):
    return call(client, "POST", "/transfers", key, json=body, headers={"Idempotency-Key": idem})


def test_two_users_sending_the_same_idempotency_key_get_two_transfers(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    idem = uuid.uuid4().hex
    mine = {"from_account_id": world.owner_account, "to_account_id": world.other_account}
    theirs = {"from_account_id": world.other_account, "to_account_id": world.owner_account}
    first = _submit(client, world.keys["own key"], {**mine, "amount": 3}, idem)
    second = _submit(client, world.keys["other user's key"], {**theirs, "amount": 4}, idem)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json["data"]["id"] != second.json["data"]["id"]
    scopes = db.execute(
        "SELECT idempotency_scope FROM transfers WHERE idempotency_key = %s ORDER BY id",
        (idem,),
    ).fetchall()
    assert scopes == [(f"user:{world.owner}",), (f"user:{world.other}",)]


def test_another_key_of_the_same_user_replays_the_same_transfer(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    idem = uuid.uuid4().hex
    body = {"from_account_id": world.owner_account, "to_account_id": world.other_account}
    first = _submit(client, world.keys["own key"], {**body, "amount": 9}, idem)
    rotated = auth.create_key(db, user_id=world.owner).key
    replay = _submit(client, rotated, {**body, "amount": 9}, idem)
    assert replay.status_code == 202
    assert replay.json == first.json
    reused = _submit(client, rotated, {**body, "amount": 10}, idem)
    assert reused.status_code == 422
    assert reused.json["error"]["code"] == "idempotency_key_reused"


def test_operators_share_one_idempotency_scope_apart_from_every_users(
    client: TestClient, db: psycopg.Connection, world: World
) -> None:
    idem = uuid.uuid4().hex
    body = {"from_account_id": world.owner_account, "to_account_id": world.other_account}
    by_user = _submit(client, world.keys["own key"], {**body, "amount": 5}, idem)
    by_operator = _submit(client, world.keys["operator key"], {**body, "amount": 5}, idem)
    assert (by_user.status_code, by_operator.status_code) == (202, 202)
    assert by_user.json["data"]["id"] != by_operator.json["data"]["id"]
    another_operator = auth.create_key(db, user_id=None).key
    replay = _submit(client, another_operator, {**body, "amount": 5}, idem)
    assert replay.json == by_operator.json
