-- Dead letters: a transfer whose settlement kept failing until its retries ran out is parked,
-- marked with when that happened (last_error already holds why). The sweeper leaves parked
-- transfers alone; `settle dead-letters retry` clears the mark and sends them again.
ALTER TABLE transfers ADD COLUMN dead_lettered_at timestamptz;
ALTER TABLE transfers
    ADD CONSTRAINT dead_lettered_is_pending CHECK (dead_lettered_at IS NULL OR status = 'pending');

-- The sweeper's scan skips parked transfers, so its index does too.
DROP INDEX transfers_pending;
CREATE INDEX transfers_pending ON transfers (enqueued_at)
    WHERE status = 'pending' AND dead_lettered_at IS NULL;
CREATE INDEX transfers_dead_lettered ON transfers (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL;

-- As in 0001, except that reaching a final status also clears the dead-letter mark (a parked
-- transfer can still be settled by a message sent before it was parked, or by a client's
-- replay of its Idempotency-Key, which re-sends a pending transfer).
CREATE OR REPLACE FUNCTION settle_transfer(p_id bigint, OUT status text, OUT failure_code text)
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
               attempts = attempts + 1, finished_at = now(), dead_lettered_at = NULL
         WHERE id = p_id;
        status := 'failed';
        RETURN;
    END IF;

    UPDATE accounts SET balance = balance - t.amount WHERE id = t.from_account_id;
    UPDATE accounts SET balance = balance + t.amount WHERE id = t.to_account_id;
    INSERT INTO entries (transfer_id, account_id, amount)
    VALUES (p_id, t.from_account_id, -t.amount), (p_id, t.to_account_id, t.amount);
    UPDATE transfers
       SET status = 'settled', attempts = attempts + 1, settled_at = now(), finished_at = now(),
           dead_lettered_at = NULL
     WHERE id = p_id;
    status := 'settled';
END;
$$;
