"""One attempt of one delivery, as a delivery worker makes it: claim it (a short
transaction), sign and POST it with no connection held, record the outcome (another short
transaction). Raises the pool's and the driver's errors; what the receiver does is recorded,
never raised.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.pool import connection
from shared.errors import WebhooksUnconfigured
from shared.webhooks import deliveries, signing, transport
from shared.webhooks.deliveries import Attempt, Backoff, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    """What an attempt needs of the settings: SECRET_KEY, whether private addresses may be
    reached, the backoff between attempts, and the request's timeout."""

    secret_key: str | None
    allow_private: bool
    backoff: Backoff
    timeout: float = transport.TIMEOUT

    @classmethod
    def of(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            secret_key=settings.secret_key,
            allow_private=settings.webhook_allow_private,
            backoff=Backoff(
                first=settings.webhook_min_backoff_seconds,
                cap=settings.webhook_max_backoff_seconds,
                window=datetime.timedelta(hours=settings.webhook_retry_hours),
            ),
        )


def headers_for(attempt: Attempt, secrets_in_use: list[str], timestamp: int) -> dict[str, str]:
    """The headers of a delivery request: the event's id and the signatures."""
    return {
        "Settle-Event-Id": str(attempt.event_id),
        "Settle-Signature": signing.signature_header(secrets_in_use, timestamp, attempt.body),
    }


def send(attempt: Attempt, policy: DeliveryPolicy) -> Outcome:
    """Sign `attempt`'s body with its endpoint's secrets in use and POST it; the outcome. An
    endpoint whose secret cannot be derived (SECRET_KEY unset or changed) is not sent to."""
    try:
        in_use = signing.secrets_in_use(
            signing.signing_key(policy.secret_key),
            attempt.endpoint_id,
            salt=attempt.secret_salt,
            stored_check=attempt.secret_key_check,
            previous_salt=attempt.previous_secret_salt,
        )
    except WebhooksUnconfigured as exc:
        return Outcome(None, f"not sent: {exc.message}", 0)
    headers = headers_for(attempt, in_use, int(time.time()))
    return transport.post(
        attempt.url,
        attempt.body,
        headers,
        allow_private=policy.allow_private,
        timeout=policy.timeout,
    )


def deliver(pool: ConnectionPool, delivery_id: int, policy: DeliveryPolicy) -> str | None:
    """Make one attempt of delivery `delivery_id` if it is due; return its status after the
    attempt (None: nothing was due, as for a message sent twice)."""
    with connection(pool) as conn:
        attempt = deliveries.claim(conn, delivery_id)
    if attempt is None:
        return None
    outcome = send(attempt, policy)
    with connection(pool) as conn:
        status = deliveries.record(conn, attempt, outcome, policy.backoff)
    if outcome.delivered:
        log.info(
            "webhook delivery %s (event %s, endpoint %s): delivered, %s in %d ms",
            delivery_id,
            attempt.event_id,
            attempt.endpoint_id,
            outcome.status_code,
            outcome.latency_ms,
        )
    else:
        log.warning(
            "webhook delivery %s (event %s, endpoint %s): attempt %d failed (%s); %s",
            delivery_id,
            attempt.event_id,
            attempt.endpoint_id,
            attempt.attempts + 1,
            outcome.error,
            "given up" if status == "failed" else status,
        )
    return status
