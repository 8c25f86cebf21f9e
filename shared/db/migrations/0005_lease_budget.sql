-- Each lease records the budget its process was configured with; the protocol keeps to the
-- smallest budget among live leases, so processes started with different settings (a rolling
-- deploy) never grow past what the strictest of them allows.
ALTER TABLE connection_leases ADD COLUMN budget integer NOT NULL DEFAULT 2147483647
    CHECK (budget >= 0);
