"""`settle keys create|list|update|revoke`, run as the real command against the test database, and
the keys it makes used on the real app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from falcon.testing import TestClient

from shared.ledger import auth
from tests.helpers import make_user, unique_email

SETTLE = Path(sys.executable).with_name("settle")


def settle(*args: str) -> subprocess.CompletedProcess[str]:
    """`settle ARGS` with the suite's environment (DATABASE_URL names the test database)."""
    return subprocess.run(
        [str(SETTLE), *args], env=dict(os.environ), capture_output=True, text=True, timeout=60
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_create_for_a_user_prints_only_the_key_and_the_key_acts_for_that_user(
    client: TestClient, db: psycopg.Connection
) -> None:
    user, other = make_user(db), make_user(db)
    done = settle("keys", "create", "--user", str(user), "--label", "cli test")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert re.fullmatch(r"settle_[A-Za-z0-9_-]{43}", key)
    assert "not shown again" in done.stderr
    assert client.simulate_get(f"/users/{user}", headers=bearer(key)).status_code == 200
    assert client.simulate_get(f"/users/{other}", headers=bearer(key)).status_code == 404


def test_keys_create_operator_makes_a_key_that_may_create_users(client: TestClient) -> None:
    done = settle("keys", "create", "--operator")
    assert done.returncode == 0, done.stderr
    body = {"email": unique_email(), "name": "Made by a CLI key"}
    resp = client.simulate_post("/users", json=body, headers=bearer(done.stdout.strip()))
    assert resp.status_code == 201


def test_keys_list_shows_every_key_without_its_secret(db: psycopg.Connection) -> None:
    user = make_user(db)
    key = settle("keys", "create", "--user", str(user), "--label", "listed").stdout.strip()
    listed = settle("keys", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if f"user {user} " in line)
    assert "listed" in line and key[:12] + "..." in line
    assert key not in listed.stdout
    assert listed.stdout.splitlines()[0].split() == [
        "id",
        "holder",
        "label",
        "key",
        "rate",
        "burst",
        "created",
        "revoked",
    ]


def test_keys_revoke_refuses_the_key_from_then_on_and_lists_it_revoked(
    client: TestClient, db: psycopg.Connection
) -> None:
    user = make_user(db)
    key = settle("keys", "create", "--user", str(user)).stdout.strip()
    key_id = db.execute(
        "SELECT id FROM api_keys WHERE user_id = %s ORDER BY id DESC LIMIT 1", (user,)
    ).fetchone()
    assert key_id is not None
    assert client.simulate_get(f"/users/{user}", headers=bearer(key)).status_code == 200
    done = settle("keys", "revoke", str(key_id[0]))
    assert (done.returncode, done.stdout.strip()) == (0, f"settle keys: key {key_id[0]} revoked")
    # A process may trust a key it looked up for up to a second (API_KEY_CACHE_SECONDS):
    # the contract is one second from the revocation, so ask again once that has passed.
    revoked = db.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (key_id[0],)).fetchone()
    assert revoked is not None and revoked[0] is not None
    time.sleep(max(0.0, revoked[0].timestamp() + 1.0 - time.time()))
    assert client.simulate_get(f"/users/{user}", headers=bearer(key)).status_code == 401
    line = next(
        line
        for line in settle("keys", "list").stdout.splitlines()
        if line.startswith(f"{key_id[0]} ")
    )
    # id, holder (2 words), key, rate, burst, created (2), revoked (2)
    assert len(line.split()) == 10
    again = settle("keys", "revoke", str(key_id[0]))
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"settle keys: key {key_id[0]} was already revoked",
    )


def test_keys_commands_naming_an_unknown_user_or_key_exit_1_with_one_line(
    db: psycopg.Connection,
) -> None:
    missing = make_user(db) + 1_000_000
    for args in (("create", "--user", str(missing)), ("revoke", str(missing))):
        done = settle("keys", *args)
        assert done.returncode == 1
        assert done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1
        assert "does not exist" in done.stderr


def test_keys_create_needs_exactly_one_of_user_or_operator() -> None:
    assert settle("keys", "create").returncode == 2
    assert settle("keys", "create", "--operator", "--user", "1").returncode == 2


def key_limits(db: psycopg.Connection, key_id: int) -> tuple[object, object]:
    row = db.execute(
        "SELECT rate_per_second, rate_burst FROM api_keys WHERE id = %s", (key_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def newest_key_id(db: psycopg.Connection) -> int:
    row = db.execute("SELECT max(id) FROM api_keys").fetchone()
    assert row is not None
    return int(row[0])


def test_keys_create_and_update_set_a_keys_own_rate_limit_and_list_shows_it(
    db: psycopg.Connection,
) -> None:
    user = make_user(db)
    done = settle("keys", "create", "--user", str(user), "--rate", "2.5", "--burst", "10")
    assert done.returncode == 0, done.stderr
    assert "rate limit 2.5/s, burst 10" in done.stderr
    key_id = newest_key_id(db)
    assert key_limits(db, key_id) == (2.5, 10)

    done = settle("keys", "update", str(key_id), "--rate", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(
        f"settle keys: key {key_id} now has rate limit 5/s, burst 10"
    )
    assert key_limits(db, key_id) == (5.0, 10)  # the burst left out stays

    done = settle("keys", "update", str(key_id), "--burst", "default")
    assert done.returncode == 0, done.stderr
    assert key_limits(db, key_id) == (5.0, None)
    line = next(
        ln for ln in settle("keys", "list").stdout.splitlines() if ln.startswith(f"{key_id} ")
    )
    assert line.split()[4:6] == ["5/s", "default"]

    done = settle("keys", "update", str(key_id), "--rate", "DEFAULT", "--burst", "default")
    assert done.returncode == 0, done.stderr
    assert "the default rate limit" in done.stdout
    assert key_limits(db, key_id) == (None, None)


#: Every bad value of each option, and a word of what the error must say.
BAD_LIMITS = [
    ("--rate", "0", "between 0.001 and 1,000,000"),
    ("--rate", "-3", "between 0.001 and 1,000,000"),
    ("--rate", "0.0001", "between 0.001 and 1,000,000"),
    ("--rate", "1e7", "between 0.001 and 1,000,000"),
    ("--rate", "nan", "between 0.001 and 1,000,000"),
    ("--rate", "inf", "between 0.001 and 1,000,000"),
    ("--rate", "ten", "requests per second"),
    ("--rate", "", "requests per second"),
    ("--rate", "5/s", "requests per second"),
    ("--burst", "0", "from 1 to 1,000,000"),
    ("--burst", "-1", "from 1 to 1,000,000"),
    ("--burst", "1000001", "from 1 to 1,000,000"),
    ("--burst", "2.5", "whole number"),
    ("--burst", "many", "whole number"),
]


def test_every_bad_rate_or_burst_is_one_clear_error_and_changes_nothing(
    db: psycopg.Connection,
) -> None:
    user = make_user(db)
    key_id = auth.create_key(db, user_id=user, rate=7.0, burst=70).id
    keys_before = newest_key_id(db)
    for option, value, says in BAD_LIMITS:
        for args in (
            ("create", "--user", str(user), option, value),
            ("update", str(key_id), option, value),
        ):
            done = settle("keys", *args)
            shown = f"settle keys {' '.join(args)}"
            assert done.returncode == 2, shown
            assert done.stdout == "", shown
            assert option in done.stderr and says in done.stderr, (shown, done.stderr)
            assert "Traceback" not in done.stderr, shown
    assert newest_key_id(db) == keys_before, "a refused create made a key"
    assert key_limits(db, key_id) == (7.0, 70), "a refused update changed the key"


def test_keys_update_needs_a_limit_to_change_and_an_existing_key(db: psycopg.Connection) -> None:
    key_id = auth.create_key(db, user_id=make_user(db)).id
    done = settle("keys", "update", str(key_id))
    assert done.returncode == 2
    assert "--rate" in done.stderr
    done = settle("keys", "update", str(key_id + 1_000_000), "--rate", "3")
    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert key_limits(db, key_id) == (None, None)
