-- Read-only operator keys, and what the dashboard keeps: its sessions, its signing secret and
-- the record of every operator action.

-- An operator key is one with no user; is_operator only restated that. A read-only operator
-- key sees everything an operator key sees and changes nothing.
ALTER TABLE api_keys DROP CONSTRAINT operator_xor_user;
ALTER TABLE api_keys DROP COLUMN is_operator;
ALTER TABLE api_keys ADD COLUMN read_only boolean NOT NULL DEFAULT false;
ALTER TABLE api_keys
    ADD CONSTRAINT read_only_is_operator CHECK (NOT read_only OR user_id IS NULL);

-- Secrets the service makes for itself once (the dashboard's cookie signing key), so that
-- every web process, on every host, signs and checks alike without configuration.
CREATE TABLE service_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL CHECK (octet_length(value) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A dashboard session: the signed cookie names one row. Logging out deletes it; revoking its
-- key, or leaving it idle past the configured time, ends it (the lookup joins api_keys).
CREATE TABLE dashboard_sessions (
    id            bytea PRIMARY KEY CHECK (octet_length(id) = 32),
    key_id        bigint NOT NULL REFERENCES api_keys (id),
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dashboard_sessions_key_id ON dashboard_sessions (key_id);

-- What operators did: which key, what, to which transfers, when. One row per action (a bulk
-- retry writes one per batch, each naming its transfers).
CREATE TABLE operator_actions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id        bigint REFERENCES api_keys (id),
    action        text NOT NULL CHECK (action IN ('retry', 'cancel')),
    transfer_ids  bigint[] NOT NULL,
    detail        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_transfer_ids ON operator_actions USING gin (transfer_ids);
CREATE INDEX operator_actions_created_at ON operator_actions (created_at);

-- The dashboard's lists: transfers that failed, and the last hour's outcomes.
CREATE INDEX transfers_failed ON transfers (id) WHERE status = 'failed';
CREATE INDEX transfers_finished_at ON transfers (finished_at) WHERE finished_at IS NOT NULL;
