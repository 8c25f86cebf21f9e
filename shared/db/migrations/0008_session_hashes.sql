-- Dashboard sessions a copy of the database cannot open. Only the SHA-256 of a session's id
-- is kept (the id itself lives in the operator's cookie alone, and a hash cannot be turned
-- back into it), and the CSRF token is no longer stored: it is derived from the session id
-- with the signing secret. A cookie signed with the secret in service_secrets is therefore
-- not enough on its own: it must also name an id whose hash is here.
-- Sessions open when this migration runs are ended: their operators log in again.
DROP TABLE dashboard_sessions;
CREATE TABLE dashboard_sessions (
    id_hash       bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    key_id        bigint NOT NULL REFERENCES api_keys (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dashboard_sessions_key_id ON dashboard_sessions (key_id);
