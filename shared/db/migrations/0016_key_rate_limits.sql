-- Per-key rate limits: a key's own token bucket, overriding RATE_LIMIT_PER_SECOND and
-- RATE_LIMIT_BURST. NULL keeps the setting; each column falls back on its own. The bounds
-- are those `settle keys` accepts (NaN is above every number in Postgres, so the upper bound
-- refuses it too).
ALTER TABLE api_keys
    ADD COLUMN rate_per_second double precision
        CHECK (rate_per_second >= 0.001 AND rate_per_second <= 1000000),
    ADD COLUMN rate_burst integer CHECK (rate_burst BETWEEN 1 AND 1000000);
