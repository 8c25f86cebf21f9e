-- API keys, and Idempotency-Keys scoped to the holder of the API key that sent them.

-- Only the SHA-256 of a key is stored: a copy of this table opens no door. A key belongs to
-- one user (it acts on that user's resources) or to no user (an operator key: it may do
-- everything). Revoking sets revoked_at; the row stays, so `settle keys list` shows history.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint REFERENCES users (id),
    is_operator  boolean NOT NULL,
    key_hash     bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    key_prefix   text NOT NULL,
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CONSTRAINT operator_xor_user CHECK (is_operator = (user_id IS NULL))
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

-- 'operator' for transfers submitted with an operator key (and by the service itself, e.g.
-- the demo seed), 'user:<id>' for those submitted with one of that user's keys. The same
-- Idempotency-Key from two holders names two transfers. Rows from before API keys existed
-- were submitted without one and join the operator scope.
ALTER TABLE transfers ADD COLUMN idempotency_scope text NOT NULL DEFAULT 'operator';
ALTER TABLE transfers ALTER COLUMN idempotency_scope DROP DEFAULT;
ALTER TABLE transfers DROP CONSTRAINT transfers_idempotency_key_key;
ALTER TABLE transfers
    ADD CONSTRAINT transfers_idempotency UNIQUE (idempotency_scope, idempotency_key);
