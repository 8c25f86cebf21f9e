"""Signing secrets of webhook endpoints, and the `Settle-Signature` header.

An endpoint's secret is never stored. It is derived: HMAC-SHA256 under SECRET_KEY (an
environment setting, never in the database) of the endpoint's id and a random salt that is
stored, shown as `whsec_` and the digest in base64url. So a copy of the database, salts
included, cannot make a secret or sign, while the service derives it again for every
delivery. The endpoint also keeps `key_check(SECRET_KEY)`, an HMAC of a constant, so that a
SECRET_KEY changed since the secret was made is reported (`WebhooksUnconfigured`) instead of
signing with a secret the receiver never saw.

A delivery's header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`,
with one `v1=` per secret in use: two while a rotated secret's predecessor is still valid
(24 hours), as Stripe does, so a receiver verifies with whichever it has.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from shared.errors import WebhooksUnconfigured

#: What every secret starts with, so that one found in a log or a file says what it is.
SECRET_PREFIX = "whsec_"
#: How long the secret a rotation replaced stays valid.
ROTATION_OVERLAP = datetime.timedelta(hours=24)
#: Bytes of random salt per secret.
SALT_BYTES = 16

_SECRET_CONTEXT = b"settle webhook secret v1\x00"
_CHECK_CONTEXT = b"settle webhook key check v1"


def signing_key(secret_key: str | None) -> bytes:
    """SECRET_KEY as the key secrets are derived under. Raises `WebhooksUnconfigured` when it
    is not set."""
    if not secret_key:
        raise WebhooksUnconfigured(
            "webhook secrets need SECRET_KEY, which is not set on this server: an operator"
            " sets it (docs/configuration.md) for webhooks to be created and delivered"
        )
    return secret_key.encode()


def new_salt() -> bytes:
    """A fresh random salt for a new secret."""
    return secrets.token_bytes(SALT_BYTES)


def key_check(key: bytes) -> bytes:
    """What an endpoint stores to recognise the SECRET_KEY its secret was derived with: an
    HMAC of a constant, which tells nothing of the key."""
    return hmac.new(key, _CHECK_CONTEXT, hashlib.sha256).digest()[:16]


def derive_secret(key: bytes, endpoint_id: int, salt: bytes) -> str:
    """The signing secret of endpoint `endpoint_id` with `salt`, under `key` (SECRET_KEY)."""
    message = _SECRET_CONTEXT + str(endpoint_id).encode() + b"\x00" + salt
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def require_same_key(key: bytes, stored_check: bytes) -> None:
    """Raises `WebhooksUnconfigured` when `key` is not the SECRET_KEY whose `key_check` an
    endpoint stored: the secrets derived now would not be the ones its owner holds."""
    if not hmac.compare_digest(key_check(key), bytes(stored_check)):
        raise WebhooksUnconfigured(
            "SECRET_KEY is not the key this endpoint's secret was made with (it was changed"
            " since): restore it, or rotate the endpoint's secret"
        )


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret` (the whole `whsec_...`
    string, as the receiver holds it)."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secrets_in_use: Sequence[str], timestamp: int, body: bytes) -> str:
    """The `Settle-Signature` value: `t=<timestamp>` and a `v1=` per secret, newest first."""
    parts = [f"t={timestamp}"]
    parts.extend(f"v1={signature(secret, timestamp, body)}" for secret in secrets_in_use)
    return ",".join(parts)


def verify(header: str, body: bytes, secret: str) -> int | None:
    """The timestamp of a `Settle-Signature` header one of whose `v1=` signatures `secret`
    made over `body`; None when none did or the header is malformed. (Receivers should also
    refuse an old timestamp; docs/examples/webhook_receiver.py shows how.)"""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None:
        return None
    expected = signature(secret, timestamp, body)
    if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        return timestamp
    return None


def secrets_in_use(
    key: bytes,
    endpoint_id: int,
    *,
    salt: bytes,
    stored_check: bytes,
    previous_salt: bytes | None,
) -> list[str]:
    """The secrets a delivery to endpoint `endpoint_id` is signed with, newest first: its
    current one, and the one a rotation replaced while that is still valid (`previous_salt`,
    None once expired). Raises `WebhooksUnconfigured` when `key` is not the SECRET_KEY the
    secrets were derived with."""
    require_same_key(key, stored_check)
    in_use = [derive_secret(key, endpoint_id, bytes(salt))]
    if previous_salt is not None:
        in_use.append(derive_secret(key, endpoint_id, bytes(previous_salt)))
    return in_use
