-- One row per running process: its share of the connection budget (see shared/leases.py).
CREATE TABLE connection_leases (
    holder        text PRIMARY KEY,        -- the process's application_name
    role          text NOT NULL,
    wanted        integer NOT NULL CHECK (wanted >= 1),
    granted       integer NOT NULL DEFAULT 0 CHECK (granted >= 0),
    acquired_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
