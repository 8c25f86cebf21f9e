"""The webhook endpoints' API through the real app, on a database of its own (endpoints count
towards a per-owner limit): each key sees and changes only its own endpoints, every bad input
is a 4xx with a stable code that changes nothing, the secret is shown once and a copy of the
database cannot make it, and a rotation keeps the old secret valid beside the new one.

Every answer is held to the OpenAPI document (tests/contract.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from falcon.testing import TestClient
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.ledger import auth
from shared.testing.scratch import scratch_database
from shared.webhooks import endpoints, signing
from tests.contract import Recorder
from tests.helpers import make_user, opened_pool
from web.app import create_app

URL = "https://93.184.215.14/settle/hook"  # a public address: no DNS needed
TYPES = ["transfer.settled", "transfer.failed"]


@pytest.fixture(scope="module")
def hooks_db(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url, prefix="settle_hooks") as url:
        yield url


@pytest.fixture(scope="module")
def hooks_pool(settings: Settings, hooks_db: str) -> Iterator[ConnectionPool]:
    with opened_pool(settings.with_(database_url=hooks_db), "web-hooks", size=2) as pool:
        yield pool


def _app(settings: Settings, hooks_db: str, pool: ConnectionPool, **changes: object) -> Recorder:
    app = create_app(
        settings.with_(database_url=hooks_db, **changes),
        pool=pool,
        enqueue=lambda transfer_id: None,
        ping_broker=lambda: True,
    )
    return Recorder(app)


@pytest.fixture
def recorder(settings: Settings, hooks_db: str, hooks_pool: ConnectionPool) -> Iterator[Recorder]:
    """The app as the tests run it: SECRET_KEY set, private addresses refused (the tests'
    own environment allows them; these tests check the refusals)."""
    found = _app(settings, hooks_db, hooks_pool, webhook_allow_private=False)
    yield found
    assert found.violations == [], "answers that break the OpenAPI document:\n" + "\n".join(
        found.violations
    )


@pytest.fixture
def conn(hooks_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hooks_db, autocommit=True) as c:
        yield c


def as_key(recorder: Recorder, key: str) -> TestClient:
    return TestClient(recorder, headers={"Authorization": f"Bearer {key}"})


def user_client(recorder: Recorder, conn: psycopg.Connection) -> tuple[TestClient, int]:
    user = make_user(conn)
    return as_key(recorder, auth.create_key(conn, user_id=user).key), user


def create(client: TestClient, url: str = URL, types: list[str] | None = None) -> dict:
    answer = client.simulate_post(
        "/webhook-endpoints", json={"url": url, "event_types": types or TYPES}
    )
    assert answer.status_code == 201, answer.text
    return answer.json["data"]


def table_counts(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM webhook_endpoints), (SELECT count(*) FROM webhook_deliveries)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_users_endpoint_is_shown_with_its_secret_once_and_listed_without_it(
    recorder: Recorder, conn: psycopg.Connection, settings: Settings
) -> None:
    client, user = user_client(recorder, conn)
    answer = client.simulate_post(
        "/webhook-endpoints", json={"url": URL, "event_types": TYPES + ["transfer.settled"]}
    )
    assert answer.status_code == 201
    made = answer.json["data"]
    assert answer.headers["location"] == f"/webhook-endpoints/{made['id']}"
    assert made["url"] == URL and made["event_types"] == TYPES and made["user_id"] == user
    assert made["secret"].startswith("whsec_")

    read = client.simulate_get(f"/webhook-endpoints/{made['id']}")
    assert read.status_code == 200
    assert "secret" not in read.json["data"]
    assert read.json["data"] == {k: v for k, v in made.items() if k != "secret"}
    listed = client.simulate_get("/webhook-endpoints")
    assert listed.status_code == 200
    assert [e["id"] for e in listed.json["data"]] == [made["id"]]
    assert all("secret" not in e for e in listed.json["data"])

    # The secret is the one the service derives again for deliveries.
    row = conn.execute(
        "SELECT secret_salt, secret_key_check FROM webhook_endpoints WHERE id = %s",
        (made["id"],),
    ).fetchone()
    assert row is not None
    key = signing.signing_key(settings.secret_key)
    in_use = signing.secrets_in_use(
        key, made["id"], salt=row[0], stored_check=row[1], previous_salt=None
    )
    assert in_use == [made["secret"]]


def test_a_key_sees_and_changes_only_its_users_endpoints_and_an_operator_key_all(
    recorder: Recorder, conn: psycopg.Connection
) -> None:
    alice, _ = user_client(recorder, conn)
    bob, _ = user_client(recorder, conn)
    operator = as_key(recorder, auth.create_key(conn, user_id=None).key)
    mine = create(alice)
    theirs = create(bob)
    for method in ("simulate_get", "simulate_delete"):
        answer = getattr(alice, method)(f"/webhook-endpoints/{theirs['id']}")
        assert answer.status_code == 404
        assert answer.json["error"]["code"] == "webhook_endpoint_not_found"
    rotated = alice.simulate_post(f"/webhook-endpoints/{theirs['id']}/rotate-secret")
    assert rotated.status_code == 404
    assert [e["id"] for e in alice.simulate_get("/webhook-endpoints").json["data"]] == [mine["id"]]
    assert bob.simulate_get(f"/webhook-endpoints/{theirs['id']}").status_code == 200

    everyone = {
        e["id"] for e in operator.simulate_get("/webhook-endpoints?limit=1000").json["data"]
    }
    assert {mine["id"], theirs["id"]} <= everyone
    by_operator = create(operator)
    assert by_operator["user_id"] is None
    assert operator.simulate_delete(f"/webhook-endpoints/{theirs['id']}").status_code == 204
    assert bob.simulate_get(f"/webhook-endpoints/{theirs['id']}").status_code == 404


def test_the_list_pages_with_a_cursor(recorder: Recorder, conn: psycopg.Connection) -> None:
    client, _ = user_client(recorder, conn)
    made = [create(client)["id"] for _ in range(3)]
    first = client.simulate_get("/webhook-endpoints?limit=2")
    assert [e["id"] for e in first.json["data"]] == made[:2]
    cursor = first.json["next_cursor"]
    second = client.simulate_get("/webhook-endpoints", params={"limit": "2", "cursor": cursor})
    assert [e["id"] for e in second.json["data"]] == made[2:]
    assert second.json["next_cursor"] is None


BAD_BODIES = [
    ({"url": URL}, "invalid_request"),
    ({"event_types": TYPES}, "invalid_request"),
    ({"url": URL, "event_types": TYPES, "secret": "mine"}, "invalid_request"),
    ({"url": URL, "event_types": []}, "invalid_request"),
    ({"url": URL, "event_types": "transfer.settled"}, "invalid_request"),
    ({"url": URL, "event_types": ["transfer.exploded"]}, "invalid_request"),
    ({"url": URL, "event_types": [1]}, "invalid_request"),
    ({"url": 7, "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "ftp://93.184.215.14/x", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "file:///etc/passwd", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "93.184.215.14/hook", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://user:pw@93.184.215.14/", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://93.184.215.14/#frag", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://93.184.215.14:99999/", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https:///nohost", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://93.184.215.14/a b", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://exämple.com/", "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://93.184.215.14/" + "a" * 2048, "event_types": TYPES}, "invalid_webhook_url"),
    ({"url": "https://no-such-host.invalid/", "event_types": TYPES}, "invalid_webhook_url"),
]

REFUSED_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://2130706433/hook",  # 127.0.0.1 written as one number
    "http://0x7f.1/hook",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
def test_a_bad_endpoint_request_is_refused_with_its_code_and_changes_nothing(
    recorder: Recorder, conn: psycopg.Connection, body: dict, code: str
) -> None:
    client, _ = user_client(recorder, conn)
    before = table_counts(conn)
    answer = client.simulate_post("/webhook-endpoints", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json["error"]["code"] == code
    assert table_counts(conn) == before


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_an_endpoint_leading_to_a_private_address_is_refused_and_changes_nothing(
    recorder: Recorder, conn: psycopg.Connection, url: str
) -> None:
    client, _ = user_client(recorder, conn)
    before = table_counts(conn)
    answer = client.simulate_post("/webhook-endpoints", json={"url": url, "event_types": TYPES})
    assert answer.status_code == 400, answer.text
    assert answer.json["error"]["code"] == "webhook_address_refused"
    assert table_counts(conn) == before


def test_private_addresses_are_accepted_when_webhook_allow_private_is_on(
    settings: Settings, hooks_db: str, hooks_pool: ConnectionPool, conn: psycopg.Connection
) -> None:
    allowing = _app(settings, hooks_db, hooks_pool, webhook_allow_private=True)
    client, _ = user_client(allowing, conn)
    made = create(client, "http://127.0.0.1:9/hook")
    assert made["url"] == "http://127.0.0.1:9/hook"
    assert allowing.violations == []


def test_other_bad_requests_get_their_codes_and_change_nothing(
    recorder: Recorder, conn: psycopg.Connection
) -> None:
    client, _ = user_client(recorder, conn)
    before = table_counts(conn)
    not_json = client.simulate_post(
        "/webhook-endpoints", body="url=x", headers={"Content-Type": "text/plain"}
    )
    assert (not_json.status_code, not_json.json["error"]["code"]) == (
        415,
        "unsupported_media_type",
    )
    broken = client.simulate_post(
        "/webhook-endpoints", body="{", headers={"Content-Type": "application/json"}
    )
    assert (broken.status_code, broken.json["error"]["code"]) == (400, "invalid_json")
    for path in ("/webhook-endpoints/abc", "/webhook-endpoints/0", "/webhook-endpoints/99999999"):
        assert client.simulate_get(path).json["error"]["code"] == "webhook_endpoint_not_found"
        assert client.simulate_delete(path).status_code == 404
        assert client.simulate_post(f"{path}/rotate-secret").status_code == 404
    bad_query = client.simulate_get("/webhook-endpoints?status=live")
    assert (bad_query.status_code, bad_query.json["error"]["code"]) == (400, "invalid_request")
    bad_cursor = client.simulate_get("/webhook-endpoints?cursor=nope")
    assert (bad_cursor.status_code, bad_cursor.json["error"]["code"]) == (400, "invalid_cursor")
    assert table_counts(conn) == before


def test_a_read_only_key_may_list_but_not_create_delete_or_rotate(
    recorder: Recorder, conn: psycopg.Connection
) -> None:
    owner, _ = user_client(recorder, conn)
    made = create(owner)
    reader = as_key(recorder, auth.create_key(conn, user_id=None, read_only=True).key)
    before = table_counts(conn)
    assert reader.simulate_get(f"/webhook-endpoints/{made['id']}").status_code == 200
    for answer in (
        reader.simulate_post("/webhook-endpoints", json={"url": URL, "event_types": TYPES}),
        reader.simulate_delete(f"/webhook-endpoints/{made['id']}"),
        reader.simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret"),
    ):
        assert (answer.status_code, answer.json["error"]["code"]) == (403, "read_only_key")
    assert table_counts(conn) == before
    assert owner.simulate_get(f"/webhook-endpoints/{made['id']}").status_code == 200


def test_deleting_an_endpoint_cancels_its_pending_deliveries_and_keeps_the_made_ones(
    recorder: Recorder, conn: psycopg.Connection
) -> None:
    client, _ = user_client(recorder, conn)
    made = create(client)
    for event_id, status in ((1, "pending"), (2, "delivered")):
        conn.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status)"
            " VALUES (%s, %s, 'transfer.settled', '{}', %s)",
            (made["id"], event_id, status),
        )
    assert client.simulate_delete(f"/webhook-endpoints/{made['id']}").status_code == 204
    assert client.simulate_get(f"/webhook-endpoints/{made['id']}").status_code == 404
    assert client.simulate_delete(f"/webhook-endpoints/{made['id']}").status_code == 404
    statuses = conn.execute(
        "SELECT event_id, status FROM webhook_deliveries WHERE endpoint_id = %s ORDER BY 1",
        (made["id"],),
    ).fetchall()
    assert statuses == [(1, "cancelled"), (2, "delivered")]


def test_an_owner_may_have_a_bounded_number_of_endpoints(
    recorder: Recorder, conn: psycopg.Connection
) -> None:
    client, _ = user_client(recorder, conn)
    made = [create(client)["id"] for _ in range(endpoints.MAX_ENDPOINTS)]
    before = table_counts(conn)
    answer = client.simulate_post("/webhook-endpoints", json={"url": URL, "event_types": TYPES})
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "too_many_webhook_endpoints")
    assert table_counts(conn) == before
    assert client.simulate_delete(f"/webhook-endpoints/{made[0]}").status_code == 204
    create(client)


def test_without_secret_key_endpoints_cannot_be_made_or_rotated_and_nothing_changes(
    settings: Settings, hooks_db: str, hooks_pool: ConnectionPool, conn: psycopg.Connection
) -> None:
    keyed = _app(settings, hooks_db, hooks_pool)
    unkeyed = _app(settings, hooks_db, hooks_pool, secret_key=None)
    user = make_user(conn)
    key = auth.create_key(conn, user_id=user).key
    made = create(as_key(keyed, key))
    client = as_key(unkeyed, key)
    before = conn.execute("SELECT * FROM webhook_endpoints ORDER BY id").fetchall()
    for answer in (
        client.simulate_post("/webhook-endpoints", json={"url": URL, "event_types": TYPES}),
        client.simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret"),
    ):
        assert answer.status_code == 503
        assert answer.json["error"]["code"] == "webhooks_unconfigured"
        assert "SECRET_KEY" in answer.json["error"]["message"]
    assert conn.execute("SELECT * FROM webhook_endpoints ORDER BY id").fetchall() == before
    assert client.simulate_get(f"/webhook-endpoints/{made['id']}").status_code == 200
    assert keyed.violations == [] and unkeyed.violations == []


def _stored(conn: psycopg.Connection, endpoint_id: int) -> dict:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT secret_salt, secret_key_check, previous_secret_salt,"
            " previous_secret_expires_at - secret_rotated_at AS overlap"
            " FROM webhook_endpoints WHERE id = %s",
            (endpoint_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def _in_use(settings: Settings, endpoint_id: int, row: dict) -> list[str]:
    return signing.secrets_in_use(
        signing.signing_key(settings.secret_key),
        endpoint_id,
        salt=row["secret_salt"],
        stored_check=row["secret_key_check"],
        previous_salt=row["previous_secret_salt"],
    )


def test_rotating_a_secret_keeps_the_old_one_signing_for_a_day_beside_the_new_one(
    recorder: Recorder, conn: psycopg.Connection, settings: Settings
) -> None:
    client, _ = user_client(recorder, conn)
    made = create(client)
    answer = client.simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret")
    assert answer.status_code == 200
    rotated = answer.json["data"]
    assert rotated["secret"] != made["secret"] and rotated["secret"].startswith("whsec_")
    assert rotated["previous_secret_expires_at"] is not None
    row = _stored(conn, made["id"])
    assert row["overlap"] == signing.ROTATION_OVERLAP
    assert _in_use(settings, made["id"], row) == [rotated["secret"], made["secret"]]

    # Both secrets verify a delivery's header; a third does not.
    body = b'{"id":1}'
    header = signing.signature_header(_in_use(settings, made["id"], row), 1700000000, body)
    assert signing.verify(header, body, made["secret"]) == 1700000000
    assert signing.verify(header, body, rotated["secret"]) == 1700000000
    assert signing.verify(header, body, "whsec_" + "A" * 43) is None

    # A second rotation keeps only the secret it replaces.
    again = client.simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret").json["data"]
    assert _in_use(settings, made["id"], _stored(conn, made["id"])) == [
        again["secret"],
        rotated["secret"],
    ]


def test_a_changed_secret_key_is_reported_and_a_rotation_makes_a_secret_that_signs_alone(
    settings: Settings, hooks_db: str, hooks_pool: ConnectionPool, conn: psycopg.Connection
) -> None:
    user = make_user(conn)
    key = auth.create_key(conn, user_id=user).key
    made = create(as_key(_app(settings, hooks_db, hooks_pool), key))
    other_key = secrets.token_urlsafe(32)
    with pytest.raises(signing.WebhooksUnconfigured):
        _in_use(settings.with_(secret_key=other_key), made["id"], _stored(conn, made["id"]))
    changed = _app(settings, hooks_db, hooks_pool, secret_key=other_key)
    rotated = as_key(changed, key).simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.json["data"]["previous_secret_expires_at"] is None
    row = _stored(conn, made["id"])
    assert _in_use(settings.with_(secret_key=other_key), made["id"], row) == [
        rotated.json["data"]["secret"]
    ]


def _every_value(conn: psycopg.Connection) -> list[object]:
    """Every value of every column of every table of the database's public schema."""
    tables = [
        str(row[0])
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    ]
    assert "webhook_endpoints" in tables and "service_secrets" in tables
    values: list[object] = []
    for table in tables:
        for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))):
            values.extend(row)
    return values


def _as_keys(value: object) -> list[bytes]:
    """The ways a stored value could be used as an HMAC key."""
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        return [raw, raw.hex().encode(), base64.urlsafe_b64encode(raw).rstrip(b"=")]
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, list):
        return [key for item in value for key in _as_keys(item)]
    return [str(value).encode()]


def test_a_copy_of_the_database_holds_no_signing_secret_and_cannot_sign(
    recorder: Recorder, conn: psycopg.Connection, settings: Settings
) -> None:
    client, _ = user_client(recorder, conn)
    made = create(client)
    rotated = client.simulate_post(f"/webhook-endpoints/{made['id']}/rotate-secret").json["data"]
    body = b'{"id":42,"type":"transfer.settled"}'
    for secret in (made["secret"], rotated["secret"]):
        digest = base64.urlsafe_b64decode(secret.removeprefix("whsec_") + "=")
        wanted = signing.signature(secret, 1700000000, body)
        values = _every_value(conn)
        text = repr(values)
        for form in (secret, secret.removeprefix("whsec_"), digest.hex(), repr(digest)):
            assert form not in text
        candidates = {key for value in values for key in _as_keys(value)}
        assert len(candidates) > 10
        for key in candidates:
            forged = hmac.new(key, b"1700000000." + body, hashlib.sha256).hexdigest()
            assert forged != wanted
        # SECRET_KEY is what is missing: with it, the stored salt makes the secret.
        assert secret in _in_use(settings, made["id"], _stored(conn, made["id"]))
