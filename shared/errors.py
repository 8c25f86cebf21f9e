"""The one hierarchy of domain errors, each with a stable `code` that clients see.

The web front maps each class to an HTTP status in one place (`web/errors.py`); nothing in
`shared/` knows about HTTP.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its class name when it has none: driver errors
    span several lines (a hint, a context), and a one-line report needs only the first."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class SettleError(Exception):
    """Raised for any condition this service reports by a stable code."""

    code = "internal_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code).strip()


class InvalidSetting(SettleError):
    """Raised when an environment variable holds a value that does not parse."""

    code = "invalid_setting"


class PoolerUndeclared(InvalidSetting):
    """Raised at boot when DATABASE_URL leads through a transaction pooler that DB_POOLER
    does not declare."""

    code = "pooler_undeclared"


# Client errors: the request is wrong; nothing was changed.


class InvalidRequest(SettleError):
    """Raised when a request body or parameter has the wrong shape, type or range."""

    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    """Raised when a request body is not a JSON document (or is nested too deeply)."""

    code = "invalid_json"


class UnsupportedMediaType(SettleError):
    """Raised when a request body is not sent as application/json."""

    code = "unsupported_media_type"


class BodyTooLarge(SettleError):
    """Raised when a request body is larger than MAX_BODY_BYTES."""

    code = "body_too_large"


class InvalidBatch(InvalidRequest):
    """Raised when the body of POST /transfers/batch is not a batch at all (no `transfers`
    list, an empty one, unknown members); a defect of one transfer is that item's error."""

    code = "invalid_batch"


class BatchTooLarge(InvalidBatch):
    """Raised when POST /transfers/batch holds more transfers than one batch may."""

    code = "batch_too_large"


class InvalidCursor(InvalidRequest):
    """Raised when a list cursor was not issued by this service."""

    code = "invalid_cursor"


class CursorExpired(SettleError):
    """Raised when `GET /events` is asked for events after an id whose successors were deleted
    by retention (EVENT_RETENTION_DAYS)."""

    code = "cursor_expired"


class InvalidWebhookUrl(InvalidRequest):
    """Raised when a webhook endpoint's URL is not an absolute http or https URL with a host
    (or carries credentials, a fragment, or is too long)."""

    code = "invalid_webhook_url"


class WebhookAddressRefused(InvalidRequest):
    """Raised when a webhook endpoint's host is, or resolves to, a private, loopback,
    link-local, multicast or reserved address and WEBHOOK_ALLOW_PRIVATE is off."""

    code = "webhook_address_refused"


class IdempotencyKeyMissing(InvalidRequest):
    """Raised when POST /transfers comes without an Idempotency-Key header, or an item of a
    batch without its `idempotency_key`."""

    code = "idempotency_key_missing"


class IdempotencyKeyReused(SettleError):
    """Raised when an Idempotency-Key is replayed with a different body (or a batch item's
    `idempotency_key` with a different transfer)."""

    code = "idempotency_key_reused"


class Unauthenticated(SettleError):
    """Raised when a request needs an API key and carries none, or one that is not valid."""

    code = "unauthenticated"


class ApiKeyMissing(Unauthenticated):
    """Raised when a request that needs an API key has no `Authorization: Bearer` header."""

    code = "api_key_missing"


class ApiKeyInvalid(Unauthenticated):
    """Raised when the API key sent is malformed, unknown or revoked (the three look alike)."""

    code = "api_key_invalid"


class OperatorOnly(SettleError):
    """Raised when a user's API key asks for what only an operator key may do."""

    code = "operator_only"


class ReadOnlyKey(SettleError):
    """Raised when a read-only operator key asks to change something."""

    code = "read_only_key"


class CsrfRefused(SettleError):
    """Raised when a dashboard form or request that changes something lacks its session's
    CSRF token."""

    code = "csrf_token_invalid"


class NotFound(SettleError):
    """Raised when a resource addressed by the URL does not exist."""

    code = "not_found"


class UserNotFound(NotFound):
    """Raised when no user has the given id."""

    code = "user_not_found"


class AccountNotFound(NotFound):
    """Raised when no account has the given id."""

    code = "account_not_found"


class TransferNotFound(NotFound):
    """Raised when no transfer has the given id."""

    code = "transfer_not_found"


class WebhookEndpointNotFound(NotFound):
    """Raised when no webhook endpoint of the caller's has the given id (or it was deleted)."""

    code = "webhook_endpoint_not_found"


class WebhookDeliveryNotFound(NotFound):
    """Raised when no webhook delivery has the given id (or not of the endpoint named)."""

    code = "webhook_delivery_not_found"


class ApiKeyNotFound(NotFound):
    """Raised when no API key has the given id."""

    code = "api_key_not_found"


class EmailTaken(SettleError):
    """Raised when a user is created with an email another user already has."""

    code = "email_taken"


class TooManyWebhookEndpoints(SettleError):
    """Raised when a webhook endpoint is created for an owner that already has the most
    allowed."""

    code = "too_many_webhook_endpoints"


class TransferRejected(SettleError):
    """Raised when a well-formed transfer cannot be accepted as asked."""

    code = "transfer_rejected"


class UnknownTransferAccount(TransferRejected):
    """Raised when a transfer names an account that does not exist."""

    code = "account_not_found"


class CurrencyMismatch(TransferRejected):
    """Raised when a transfer's accounts (or its stated currency) disagree on currency."""

    code = "currency_mismatch"


class SameAccount(TransferRejected):
    """Raised when a transfer names the same account on both sides."""

    code = "same_account"


class BatchRefused(SettleError):
    """Raised when an atomic batch is refused whole because some of its transfers were."""

    code = "batch_refused"


class NotAttempted(SettleError):
    """Raised (as an item's result) for a transfer of an atomic batch that was not recorded
    because another transfer of the batch was refused."""

    code = "not_attempted"


class RateLimited(SettleError):
    """Raised when an API key has used up its rate limit; `decision` says when to retry."""

    code = "rate_limited"

    def __init__(self, message: str = "", decision: object = None) -> None:
        super().__init__(message)
        #: The `shared.ratelimit.buckets.Decision` that refused the request.
        self.decision = decision


# Server-side conditions: the request may succeed later.


class Unavailable(SettleError):
    """Raised when a dependency cannot serve in time; the caller should retry later."""

    code = "unavailable"
    retry_after = 1


class DatabaseBusy(Unavailable):
    """Raised when no pooled connection became free within POOL_TIMEOUT."""

    code = "database_busy"


class DatabaseUnavailable(Unavailable):
    """Raised when Postgres cannot be reached or dropped the connection."""

    code = "database_unavailable"


class BrokerUnavailable(Unavailable):
    """Raised by every broker operation (`shared.broker`) when the message broker, Redis or
    RabbitMQ, cannot be reached or fails the command."""

    code = "broker_unavailable"


class NotReady(Unavailable):
    """Raised by the readiness probe when Postgres or Redis does not answer this process."""

    code = "not_ready"


class Overloaded(Unavailable):
    """Raised when the web process already has more queued requests than WEB_QUEUE_LIMIT."""

    code = "overloaded"


class SettlementBehind(Overloaded):
    """Raised when a new transfer would join a settlement backlog whose oldest transfer was
    accepted longer ago than TRANSFER_BACKLOG_MAX_MS; nothing is recorded."""

    code = "overloaded"


class WebhooksUnconfigured(SettleError):
    """Raised when a webhook secret must be made or used and SECRET_KEY is not set (or is not
    the key the endpoint's secret was made with)."""

    code = "webhooks_unconfigured"


class DependencyDown(SettleError):
    """Raised by a boot check when Postgres or the message broker cannot be reached."""

    code = "dependency_down"


class RateLimitStoreUnavailable(SettleError):
    """Raised by the rate limit's buckets when Redis cannot be reached or fails the script;
    the web lets the request through (`shared.ratelimit.buckets.Limiter`)."""

    code = "rate_limit_store_unavailable"
