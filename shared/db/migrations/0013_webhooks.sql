-- Webhooks: URLs subscribed to transfer events, and the deliveries of those events to them,
-- each attempt recorded. Deliveries are made from the event sequence of migration 0012 (one
-- row per matching event and endpoint, at least once), by the workers on a queue of their
-- own (docs/api.md, the webhooks section).

-- A subscribed URL. Its owner is a user (it receives the events of that user's transfers,
-- the rule of GET /events) or, for an endpoint made with an operator key, nobody: user_id
-- NULL, every event. `event_types` lists the event types it receives (never empty).
--
-- The signing secret is not stored: it is derived, HMAC-SHA256(SECRET_KEY, id and
-- `secret_salt`), with SECRET_KEY from the environment, so a copy of this table cannot sign
-- (shared/webhooks/secrets.py). `secret_key_check` tells which SECRET_KEY the secret was
-- derived with (an HMAC of a constant under it), so that a changed SECRET_KEY is reported
-- rather than silently signing with a secret the receiver does not have. After a rotation
-- the previous salt stays valid until `previous_secret_expires_at` (deliveries carry both
-- signatures meanwhile). A deleted endpoint keeps its row (its deliveries' history refers to
-- it) with `deleted_at` set; it receives nothing more.
CREATE TABLE webhook_endpoints (
    id                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                     bigint REFERENCES users (id),
    url                         text NOT NULL,
    event_types                 text[] NOT NULL CHECK (cardinality(event_types) > 0),
    secret_salt                 bytea NOT NULL,
    secret_key_check            bytea NOT NULL,
    previous_secret_salt        bytea,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at           timestamptz,
    deleted_at                  timestamptz,
    CHECK ((previous_secret_salt IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (user_id, id) WHERE deleted_at IS NULL;

-- One event to deliver to one endpoint. `body` is the JSON the receiver gets (the event as
-- GET /events answers it), fixed when the row is made, so every attempt sends the same bytes
-- whatever retention does to the event. Status: pending (to be attempted at
-- `next_attempt_at`), delivered (a 2xx), failed (no 2xx by `retry_until`, about three days
-- after it was made) or cancelled (its endpoint was deleted first). To retry a failed one,
-- set it pending with a new `next_attempt_at` and `retry_until`, and `enqueued_at` NULL. `enqueued_at`: when a delivery message was
-- last sent for it (the dispatcher sends again one that went unanswered). `attempts` counts
-- the attempts made; the last one's status code and error are kept here too, every one in
-- webhook_attempts. No foreign key to transfer_events: retention deletes events.
CREATE TABLE webhook_deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id       bigint NOT NULL REFERENCES webhook_endpoints (id),
    event_id          bigint NOT NULL,
    event_type        text NOT NULL,
    body              text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    retry_until       timestamptz NOT NULL DEFAULT now() + interval '3 days',
    enqueued_at       timestamptz,
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

-- Every attempt of a delivery: when, how long it took, and the answer (a status code) or
-- the error (timeout, refused address, connection failure; status_code NULL then).
CREATE TABLE webhook_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    status_code   integer,
    latency_ms    integer NOT NULL CHECK (latency_ms >= 0),
    error         text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- The dispatcher's place in the event sequence: every event up to `dispatched_through` has
-- its deliveries made (in the same transaction that moved the mark). One row.
CREATE TABLE webhook_dispatch_cursor (
    one                 boolean PRIMARY KEY DEFAULT true CHECK (one),
    dispatched_through  bigint NOT NULL
);
-- Webhooks start from the events made from now on, not the whole history.
INSERT INTO webhook_dispatch_cursor (dispatched_through)
SELECT coalesce(max(id), 0) FROM transfer_events;
