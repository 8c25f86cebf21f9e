-- Metadata on transfers, and the indexes that keep GET /transfers an index scan whatever it
-- filters on.

-- What the caller attached to a transfer: a flat object of strings (checked by the web front:
-- at most 20 keys of 1 to 40 characters, values of at most 500). Transfers from before have
-- none. A constant default adds the column without rewriting the table.
ALTER TABLE transfers ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT metadata_is_an_object CHECK (jsonb_typeof(metadata) = 'object');

-- GET /transfers lists newest first, by (created_at, id): the order of each index's last two
-- columns, read backwards, so a page (and the next one, from its cursor) reads only the rows
-- it answers. One index per way in:
--   every transfer (an operator key without filters), and created_after/created_before ranges
CREATE INDEX transfers_created ON transfers (created_at, id);
--   status: a rare one (pending, failed) is reached directly, not by skipping settled rows
CREATE INDEX transfers_status_created ON transfers (status, created_at, id);
--   a user's transfers, and account_id: those out of an account, and those into it, by
--   status, so that a user's rare status is reached as directly as an operator's (a list of
--   every status reads the three ranges of each account and merges them)
CREATE INDEX transfers_from_status_created
    ON transfers (from_account_id, status, created_at, id);
CREATE INDEX transfers_to_status_created ON transfers (to_account_id, status, created_at, id);
--   failure_code: only failed transfers have one, so only they are indexed
CREATE INDEX transfers_failure_created ON transfers (failure_code, created_at, id)
    WHERE failure_code IS NOT NULL;
-- metadata[key]=value, answered with `metadata @> {...}`: jsonb_path_ops indexes each
-- key-value path as one hash, the smallest GIN index that serves @>. Transfers without metadata
-- are left out, so settling them never touches it.
CREATE INDEX transfers_metadata ON transfers USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb;
