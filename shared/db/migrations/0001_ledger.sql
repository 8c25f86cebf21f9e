-- Users, accounts, transfers and the double-entry ledger.

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                 bigint NOT NULL REFERENCES users (id),
    currency                char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance                 bigint NOT NULL DEFAULT 0,
    allow_negative_balance  boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT balance_not_negative CHECK (allow_negative_balance OR balance >= 0)
);
CREATE INDEX accounts_user_id ON accounts (user_id);

CREATE TABLE transfers (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    request_hash     text NOT NULL,
    from_account_id  bigint NOT NULL REFERENCES accounts (id),
    to_account_id    bigint NOT NULL REFERENCES accounts (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'settled', 'failed')),
    failure_code     text,
    last_error       text,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT distinct_accounts CHECK (from_account_id <> to_account_id),
    CONSTRAINT failed_has_code CHECK ((status = 'failed') = (failure_code IS NOT NULL))
);
-- The sweeper's scan: only pending rows are indexed, so the index stays small.
CREATE INDEX transfers_pending ON transfers (enqueued_at) WHERE status = 'pending';

CREATE TABLE entries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id  bigint NOT NULL REFERENCES transfers (id),
    account_id   bigint NOT NULL REFERENCES accounts (id),
    amount       bigint NOT NULL CHECK (amount <> 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_account_id ON entries (account_id, id);
CREATE INDEX entries_transfer_id ON entries (transfer_id);

-- Settles one transfer in the caller's transaction, in one round trip. Locks the transfer
-- row first, then both accounts in ascending id order (FOR NO KEY UPDATE does not conflict
-- with the FOR KEY SHARE locks that foreign-key inserts take). Returns the final status;
-- a transfer that is no longer pending is returned unchanged (idempotent).
CREATE FUNCTION settle_transfer(p_id bigint, OUT status text, OUT failure_code text)
LANGUAGE plpgsql AS $$
DECLARE
    t        transfers%ROWTYPE;
    src      accounts%ROWTYPE;
    dst      accounts%ROWTYPE;
    acct     accounts%ROWTYPE;
BEGIN
    SELECT * INTO t FROM transfers WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        status := 'missing';
        RETURN;
    END IF;
    IF t.status <> 'pending' THEN
        status := t.status;
        failure_code := t.failure_code;
        RETURN;
    END IF;

    FOR acct IN
        SELECT * FROM accounts
        WHERE id IN (t.from_account_id, t.to_account_id)
        ORDER BY id
        FOR NO KEY UPDATE
    LOOP
        IF acct.id = t.from_account_id THEN src := acct; ELSE dst := acct; END IF;
    END LOOP;

    IF NOT src.allow_negative_balance AND src.balance < t.amount THEN
        failure_code := 'insufficient_funds';
    ELSIF src.balance < -9223372036854775807 + t.amount
          OR dst.balance > 9223372036854775807 - t.amount THEN
        failure_code := 'balance_limit_exceeded';
    END IF;

    IF failure_code IS NOT NULL THEN
        UPDATE transfers
           SET status = 'failed', failure_code = settle_transfer.failure_code,
               attempts = attempts + 1, finished_at = now()
         WHERE id = p_id;
        status := 'failed';
        RETURN;
    END IF;

    UPDATE accounts SET balance = balance - t.amount WHERE id = t.from_account_id;
    UPDATE accounts SET balance = balance + t.amount WHERE id = t.to_account_id;
    INSERT INTO entries (transfer_id, account_id, amount)
    VALUES (p_id, t.from_account_id, -t.amount), (p_id, t.to_account_id, t.amount);
    UPDATE transfers
       SET status = 'settled', attempts = attempts + 1, settled_at = now(), finished_at = now()
     WHERE id = p_id;
    status := 'settled';
END;
$$;
