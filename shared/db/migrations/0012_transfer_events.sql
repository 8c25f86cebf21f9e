-- Transfer events: one ordered sequence of every change of a transfer's state, written in the
-- transaction that makes the change. GET /events reads it (and waits on it), and webhooks
-- deliver from it.
--
-- Written by triggers on `transfers`, so that no path can change a transfer without its
-- event (the web's insert, the settling functions, the dead-letter marks, an operator's
-- retry or cancel, and any statement written later), and no event is written without its
-- change: it is written by the statement that makes the change and rolls back with it.
-- A change of state is a change of `status`, `failure_code` or `dead_lettered_at`; other
-- columns (attempts, the retry schedule, enqueued_at) change without an event.
--
-- Types: transfer.accepted (inserted), transfer.settled, transfer.failed (with its code),
-- transfer.cancelled (failed as cancelled_by_operator), transfer.dead_lettered (its retries
-- ran out) and transfer.released (sent again by an operator). A row is the transfer's state
-- after the change; what a transfer never changes (its accounts, amount, currency, metadata,
-- created_at) is read from the transfer itself, and the accounts are kept here as well, so
-- that a user's events are found by index.
CREATE TABLE transfer_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type              text NOT NULL CHECK (type IN (
                          'transfer.accepted', 'transfer.settled', 'transfer.failed',
                          'transfer.cancelled', 'transfer.dead_lettered', 'transfer.released')),
    transfer_id       bigint NOT NULL,
    from_account_id   bigint NOT NULL,
    to_account_id     bigint NOT NULL,
    status            text NOT NULL,
    failure_code      text,
    attempts          integer NOT NULL,
    settled_at        timestamptz,
    dead_lettered_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
-- No foreign key to transfers: the rows come from the transfers' own triggers (and transfers
-- are never deleted), and a key would cost a lookup per event on the settlement's path.
-- `settle audit` checks that every event names its transfer.
CREATE INDEX transfer_events_from ON transfer_events (from_account_id, id);
CREATE INDEX transfer_events_to ON transfer_events (to_account_id, id);

-- Catching up exactly. An id is taken from the sequence before its transaction commits, so
-- a transaction that took id 99 may commit after another that took id 100: a reader that
-- went on from 100 would never see 99. So a reader is only shown events up to the
-- *horizon*, below every id a transaction still in flight may hold:
--
-- * Before it takes an id, a transaction that writes events registers: it reads the last id
--   taken so far (its own ids will be above it) and takes a shared advisory lock keyed by
--   that id (the key's top 16 bits are 0x5E7E; shared locks never wait for each other). The
--   lock is held until the transaction has ended, and Postgres releases it only after the
--   commit is visible to everyone.
-- * `transfer_events_horizon()` reads the last id taken, then the registrations in pg_locks,
--   and answers the smaller of that id and the lowest key registered. A transaction that
--   took an id at or below the last id read had registered before that read: if it is still
--   in flight when pg_locks is read, its key bounds the horizon below its ids; if not, it
--   has ended and is visible to every later snapshot. One that registers later takes ids
--   above the last id read.
-- * So every event up to the horizon is visible to a snapshot taken after it is computed,
--   and none can appear there later: a reader computes it, then reads (in a later statement)
--   the events up to it. The horizon never goes back.
--
-- Costs: a writer takes one shared lock per transaction (ids come from a sequence that
-- caches nothing, so the last id read is the last one handed out); readers read pg_locks.
-- NOTIFY is not used: Postgres serializes the commits of every transaction that notifies
-- under one lock, which would cost intake and settlement more than the events themselves.
CREATE FUNCTION transfer_events_register() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    taken bigint;
BEGIN
    IF current_setting('settle.transfer_events_registered', true) = 'on' THEN
        RETURN;
    END IF;
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END INTO taken
      FROM transfer_events_id_seq s;
    PERFORM pg_advisory_xact_lock_shared((x'5E7E'::bigint << 48) | taken);
    -- Transaction-local, like the lock: a subtransaction that rolls back drops both.
    PERFORM set_config('settle.transfer_events_registered', 'on', true);
END;
$$;

CREATE FUNCTION transfer_events_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken   bigint;
    lowest  bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END INTO taken
      FROM transfer_events_id_seq s;
    -- After the sequence: see above for why the order matters.
    SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO lowest
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.objsubid = 1
       AND l.classid::bigint >> 16 = x'5E7E'::bigint
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    RETURN least(taken, lowest);
END;
$$;

-- The type of the event that leaves a transfer in this state.
CREATE FUNCTION transfer_event_type(p_status text, p_failure_code text,
                                    p_dead_lettered_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_status = 'settled' THEN 'transfer.settled'
        WHEN p_status = 'failed' AND p_failure_code = 'cancelled_by_operator'
            THEN 'transfer.cancelled'
        WHEN p_status = 'failed' THEN 'transfer.failed'
        WHEN p_dead_lettered_at IS NOT NULL THEN 'transfer.dead_lettered'
        ELSE 'transfer.released'
    END
$$;

-- The events that lead a transfer from its acceptance to the state of `t`, oldest first:
-- accepted (as pending), then, unless it is still plainly pending, the event of its state
-- (`at`: when it reached it, as far as the row tells). For a transfer inserted in a state
-- other than pending (a history loaded in bulk) and for those that predate the events.
CREATE FUNCTION transfer_history(t transfers)
RETURNS TABLE (step integer, type text, status text, failure_code text, attempts integer,
               settled_at timestamptz, dead_lettered_at timestamptz, at timestamptz)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 1, 'transfer.accepted', 'pending', NULL::text,
           CASE WHEN t.status = 'pending' AND t.dead_lettered_at IS NULL THEN t.attempts
                ELSE 0 END,
           NULL::timestamptz, NULL::timestamptz, t.created_at
    UNION ALL
    SELECT 2, transfer_event_type(t.status, t.failure_code, t.dead_lettered_at), t.status,
           t.failure_code, t.attempts, t.settled_at, t.dead_lettered_at,
           coalesce(t.finished_at, t.dead_lettered_at, t.created_at)
     WHERE t.status <> 'pending' OR t.dead_lettered_at IS NOT NULL
    ORDER BY 1
$$;

-- Statement-level, with transition tables: one insert of events per statement, however many
-- transfers it changed (a settlement batch), and nothing at all for a statement that changed
-- no transfer's state (a retry counted, a transfer re-sent by the sweeper).
CREATE FUNCTION transfer_events_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM inserted) THEN
        RETURN NULL;
    END IF;
    PERFORM transfer_events_register();
    -- Accepted; a transfer inserted in another state than pending also gets that state's.
    INSERT INTO transfer_events (type, transfer_id, from_account_id, to_account_id, status,
                                 failure_code, attempts, settled_at, dead_lettered_at)
    SELECT e.type, n.id, n.from_account_id, n.to_account_id, e.status, e.failure_code,
           e.attempts, e.settled_at, e.dead_lettered_at
      FROM inserted n
      CROSS JOIN LATERAL transfer_history(n) e
     ORDER BY n.id, e.step;
    RETURN NULL;
END;
$$;

CREATE FUNCTION transfer_events_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM after_change n JOIN before_change o ON o.id = n.id
         WHERE (n.status, n.failure_code, n.dead_lettered_at)
               IS DISTINCT FROM (o.status, o.failure_code, o.dead_lettered_at)) THEN
        RETURN NULL;
    END IF;
    PERFORM transfer_events_register();
    INSERT INTO transfer_events (type, transfer_id, from_account_id, to_account_id, status,
                                 failure_code, attempts, settled_at, dead_lettered_at)
    SELECT transfer_event_type(n.status, n.failure_code, n.dead_lettered_at), n.id,
           n.from_account_id, n.to_account_id, n.status, n.failure_code, n.attempts,
           n.settled_at, n.dead_lettered_at
      FROM after_change n JOIN before_change o ON o.id = n.id
     WHERE (n.status, n.failure_code, n.dead_lettered_at)
           IS DISTINCT FROM (o.status, o.failure_code, o.dead_lettered_at)
     ORDER BY n.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER transfer_events_on_insert AFTER INSERT ON transfers
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION transfer_events_on_insert();
CREATE TRIGGER transfer_events_on_update AFTER UPDATE ON transfers
    REFERENCING OLD TABLE AS before_change NEW TABLE AS after_change
    FOR EACH STATEMENT EXECUTE FUNCTION transfer_events_on_update();

-- Retention: the sweeper deletes events older than EVENT_RETENTION_DAYS, oldest first, a
-- batch per transaction. What it deleted is always a prefix of the sequence: every event up
-- to `deleted_through` (so a reader asking for the events after an older id is told they are
-- gone), the newest of them created at `deleted_until` (so the audit knows which transfers
-- may have lost their events to it).
CREATE TABLE transfer_event_retention (
    only_row         boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    deleted_through  bigint NOT NULL DEFAULT 0,
    deleted_until    timestamptz
);
INSERT INTO transfer_event_retention DEFAULT VALUES;

-- Transfers accepted before this migration get the history that leads to their state now
-- (`transfer_history`), so that the sequence describes every transfer.
SELECT transfer_events_register();
INSERT INTO transfer_events (type, transfer_id, from_account_id, to_account_id, status,
                             failure_code, attempts, settled_at, dead_lettered_at, created_at)
SELECT e.type, t.id, t.from_account_id, t.to_account_id, e.status, e.failure_code,
       e.attempts, e.settled_at, e.dead_lettered_at, e.at
  FROM transfers t
  CROSS JOIN LATERAL transfer_history(t) e
 ORDER BY t.id, e.step;
