"""API keys and the principal a request acts for.

A key is `settle_` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 is
stored, so finding a key is one indexed lookup by hash, and a copy of the table holds nothing
that authenticates. A user's key acts for that user alone; an operator key acts for no user
and may do everything, unless it is read-only: then it sees everything and changes nothing.
Functions here raise `ApiKeyInvalid`, `OperatorOnly`, `ReadOnlyKey`, `UserNotFound` or
`ApiKeyNotFound`; driver errors propagate.

A process may remember the principal of a key it has just looked up for a fraction of a
second (`PrincipalCache`), so that a busy key costs no lookup per request; revoking a key
takes effect in every process within that time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from shared.db import Row
from shared.errors import ApiKeyInvalid, ApiKeyNotFound, OperatorOnly, ReadOnlyKey, UserNotFound
from shared.ratelimit.limits import check_burst, check_rate

KEY_PREFIX = "settle_"
_KEY = re.compile(r"settle_[A-Za-z0-9_-]{43}")
#: Characters of a key kept in clear, so that `settle keys list` can tell keys apart.
SHOWN_CHARS = 12

OPERATOR_SCOPE = "operator"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: one user (`user_id`), or an operator (`user_id` None), which
    may be `read_only` (it sees what any operator sees and changes nothing)."""

    user_id: int | None
    key_id: int | None = None
    read_only: bool = False
    #: The key's own rate limit (`api_keys.rate_per_second`, `rate_burst`); None: the
    #: settings'.
    rate: float | None = None
    burst: int | None = None

    @property
    def is_operator(self) -> bool:
        return self.user_id is None

    def owns(self, user_id: int) -> bool:
        """Whether resources of `user_id` are this principal's to see and spend."""
        return self.user_id is None or self.user_id == user_id

    @property
    def idempotency_scope(self) -> str:
        """The namespace of this principal's Idempotency-Keys: its user, or all operators."""
        return OPERATOR_SCOPE if self.user_id is None else f"user:{self.user_id}"


#: The service acting on its own behalf (the demo seed, the command line, test fixtures):
#: an operator that no API key stands for.
SYSTEM = Principal(user_id=None)


def require_operator(by: Principal) -> None:
    """Raises `OperatorOnly` unless `by` is an operator."""
    if not by.is_operator:
        raise OperatorOnly("this needs an operator API key")


def require_writer(by: Principal) -> None:
    """Raises `ReadOnlyKey` when `by` may only read."""
    if by.read_only:
        raise ReadOnlyKey("this API key is read-only; it may not change anything")


def generate_key() -> str:
    """A new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The stored form of `key`: its SHA-256 digest."""
    return hashlib.sha256(key.encode()).digest()


def well_formed(key: str) -> bool:
    """Whether `key` can be a key this service made (no database needed)."""
    return _KEY.fullmatch(key) is not None


def check_well_formed(key: str) -> None:
    """Raises `ApiKeyInvalid` when `key` cannot be a key this service made (no database
    needed, so garbage costs no connection)."""
    if not well_formed(key):
        raise ApiKeyInvalid("the API key is not valid")


def authenticate(conn: psycopg.Connection, key: str) -> Principal:
    """The principal `key` stands for. Raises `ApiKeyInvalid` for a malformed, unknown or
    revoked key."""
    check_well_formed(key)
    row = conn.execute(
        "SELECT id, user_id, read_only, rate_per_second, rate_burst FROM api_keys"
        " WHERE key_hash = %s AND revoked_at IS NULL",
        (hash_key(key),),
    ).fetchone()
    if row is None:
        raise ApiKeyInvalid("the API key is unknown or revoked")
    key_id, user_id, read_only, rate, burst = row
    return Principal(user_id=user_id, key_id=key_id, read_only=read_only, rate=rate, burst=burst)


#: The longest a process may go on trusting a key it looked up: revoking a key must take
#: effect everywhere within one second.
MAX_CACHE_SECONDS = 1.0


class PrincipalCache:
    """Principals of keys this process looked up, each trusted for `ttl` seconds from the
    moment its lookup *began* (a lookup that saw the key live began before the revocation
    committed, so the key is refused everywhere within `ttl` of that commit). Only successful
    lookups are kept: a key just created works at once. Entries are keyed by the key's
    digest, never by the key. `ttl` 0 keeps nothing. Safe to share between threads.

    Raises `ValueError` for a `ttl` outside 0..`MAX_CACHE_SECONDS`.
    """

    def __init__(
        self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 <= ttl <= MAX_CACHE_SECONDS:
            raise ValueError(f"a key may be trusted for 0 to {MAX_CACHE_SECONDS}s, not {ttl}s")
        self.ttl = ttl
        self.clock = clock
        self._max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._sweeping = threading.Lock()

    def get(self, digest: bytes) -> Principal | None:
        """The principal remembered for `digest`, or None when none is, or no longer."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, found = entry
        if self.clock() >= expires:
            self._entries.pop(digest, None)
            return None
        return found

    def put(self, digest: bytes, found: Principal, *, looked_up_at: float) -> None:
        """Remember `found` for `digest` until `ttl` after `looked_up_at`, a `clock()` reading
        taken before the lookup started."""
        expires = looked_up_at + self.ttl
        if self.ttl == 0 or self.clock() >= expires:
            return
        if len(self._entries) >= self._max_entries:
            self._sweep()
        self._entries[digest] = (expires, found)

    def _sweep(self) -> None:
        # Under a flood of distinct keys, drop the expired entries, and everything if that is
        # not enough: a miss costs one lookup, an unbounded dict costs the process.
        with self._sweeping:
            now = self.clock()
            for digest, (expires, _) in list(self._entries.items()):
                if now >= expires:
                    self._entries.pop(digest, None)
            if len(self._entries) >= self._max_entries:
                self._entries.clear()


@dataclass(frozen=True)
class CreatedKey:
    """A key just made: its id, the secret (to show once, never stored), its user and whether
    it is read-only."""

    id: int
    key: str
    user_id: int | None
    read_only: bool = False


def create_key(
    conn: psycopg.Connection,
    *,
    user_id: int | None,
    label: str = "",
    read_only: bool = False,
    rate: float | None = None,
    burst: int | None = None,
) -> CreatedKey:
    """Store a new key for `user_id` (None: an operator key, which may be `read_only`), with
    its own rate limit when `rate` or `burst` is given, and return it with its secret.

    Raises `UserNotFound` when the user does not exist, `ValueError` for a read-only user key
    or a rate or burst out of bounds (`shared.ratelimit.limits`).
    """
    if read_only and user_id is not None:
        raise ValueError("only operator keys can be read-only")
    _check_limits(rate, burst)
    key = generate_key()
    try:
        row = conn.execute(
            "INSERT INTO api_keys"
            " (user_id, read_only, key_hash, key_prefix, label, rate_per_second, rate_burst)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (user_id, read_only, hash_key(key), key[:SHOWN_CHARS], label, rate, burst),
        ).fetchone()
    except pg_errors.ForeignKeyViolation:
        raise UserNotFound(f"user {user_id} does not exist") from None
    assert row is not None
    return CreatedKey(id=row[0], key=key, user_id=user_id, read_only=read_only)


def _check_limits(rate: float | None, burst: int | None) -> None:
    if rate is not None:
        check_rate(rate, "a key's rate")
    if burst is not None:
        check_burst(burst, "a key's burst")


#: `set_key_limits`: leave this value as it is.
UNCHANGED = object()


def set_key_limits(
    conn: psycopg.Connection, key_id: int, *, rate: object = UNCHANGED, burst: object = UNCHANGED
) -> Row:
    """Give key `key_id` its own `rate` and/or `burst` (None: back to the settings'; one left
    out stays as it is); returns the key's row as `list_keys` shows it. Every process applies
    it within API_KEY_CACHE_SECONDS.

    Raises `ApiKeyNotFound` when no key has that id, `ValueError` for a value out of bounds
    (nothing is changed then).
    """
    new_rate = None if rate is UNCHANGED else rate
    new_burst = None if burst is UNCHANGED else burst
    if new_rate is not None and (
        isinstance(new_rate, bool) or not isinstance(new_rate, int | float)
    ):
        raise ValueError(f"a key's rate is a number, not {new_rate!r}")
    if new_burst is not None and (isinstance(new_burst, bool) or not isinstance(new_burst, int)):
        raise ValueError(f"a key's burst is a whole number, not {new_burst!r}")
    _check_limits(new_rate, new_burst)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "UPDATE api_keys SET"
            " rate_per_second = CASE WHEN %(set_rate)s THEN %(rate)s::double precision"
            " ELSE rate_per_second END,"
            " rate_burst = CASE WHEN %(set_burst)s THEN %(burst)s::integer ELSE rate_burst END"
            " WHERE id = %(id)s",
            {
                "set_rate": rate is not UNCHANGED,
                "rate": new_rate,
                "set_burst": burst is not UNCHANGED,
                "burst": new_burst,
                "id": key_id,
            },
        )
        cur.execute(KEY_ROW + " WHERE id = %s", (key_id,))
        row = cur.fetchone()
    if row is None:
        raise ApiKeyNotFound(f"API key {key_id} does not exist")
    return row


def revoke_key(conn: psycopg.Connection, key_id: int) -> bool:
    """Revoke key `key_id` from now on; False when it was already revoked.

    Raises `ApiKeyNotFound` when no key has that id.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = %s FOR UPDATE", (key_id,)
        ).fetchone()
        if row is None:
            raise ApiKeyNotFound(f"API key {key_id} does not exist")
        if row[0]:
            return False
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    return True


def revoke_labelled(conn: psycopg.Connection, label: str) -> int:
    """Revoke every live key labelled `label`; returns how many were."""
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE label = %s AND revoked_at IS NULL",
        (label,),
    )
    return cur.rowcount


#: A key as `list_keys` shows it.
KEY_ROW = (
    "SELECT id, user_id, read_only, label, key_prefix, created_at, revoked_at,"
    " rate_per_second, rate_burst FROM api_keys"
)


def list_keys(conn: psycopg.Connection) -> list[Row]:
    """Every key, oldest first, without secrets: id, user_id (None: operator), read_only,
    label, the first characters of the key, created_at, revoked_at, and its own rate limit
    (rate_per_second, rate_burst; None: the settings')."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(KEY_ROW + " ORDER BY id")
        return cur.fetchall()
