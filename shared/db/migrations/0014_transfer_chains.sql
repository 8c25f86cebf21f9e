-- Atomic batches: the transfers of one `POST /transfers/batch` with `"atomic": true` form a
-- chain, accepted together and settled together, in one transaction with one outcome.
--
-- A chain row records how many legs (transfers) it has; each leg names its chain. Legs are
-- inserted in the chain's own transaction, so a chain is never seen with fewer legs.
CREATE TABLE transfer_chains (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    legs        integer NOT NULL CHECK (legs > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE transfers ADD COLUMN chain_id bigint REFERENCES transfer_chains (id);
CREATE INDEX transfers_chain ON transfers (chain_id) WHERE chain_id IS NOT NULL;

-- Counts a failed settlement attempt as in 0010, on every leg of a chain that any of `p_ids`
-- belongs to as well: a chain is attempted as one unit, so its legs fail (and run out of
-- attempts) together.
CREATE OR REPLACE FUNCTION record_failed_attempt(
    p_ids bigint[], p_message text, p_error text,
    p_max_attempts integer, p_min_backoff_ms integer, p_max_backoff_ms integer)
RETURNS TABLE (id bigint, status text, retry_ms integer)
LANGUAGE plpgsql AS $$
DECLARE
    locked   bigint[];
    worst    integer;
    delay    double precision;
    v_now    timestamptz := clock_timestamp();
BEGIN
    p_ids := p_ids || ARRAY(
        SELECT leg.id FROM transfers leg
         WHERE leg.chain_id IN (SELECT tr.chain_id FROM transfers tr
                                 WHERE tr.id = ANY (p_ids) AND tr.chain_id IS NOT NULL));
    SELECT array_agg(l.id ORDER BY l.id),
           max(l.failed_attempts + 1) FILTER (WHERE l.failed_attempts + 1 < p_max_attempts)
      INTO locked, worst
      FROM (SELECT tr.id, tr.failed_attempts
              FROM transfers tr
             WHERE tr.id = ANY (p_ids) AND tr.status = 'pending'
               AND tr.dead_lettered_at IS NULL
               AND (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                    OR tr.retry_message = p_message)
             ORDER BY tr.id
               FOR NO KEY UPDATE SKIP LOCKED) l;
    IF locked IS NULL THEN
        RETURN;
    END IF;
    IF worst IS NOT NULL THEN
        delay := p_min_backoff_ms * 2.0 ^ least(worst - 1, 32) * (1 + random());
        IF delay > p_max_backoff_ms THEN
            delay := p_max_backoff_ms * (0.5 + random() / 2);
        END IF;
        delay := greatest(1, round(delay));
    END IF;
    RETURN QUERY
        WITH counted AS (
            UPDATE transfers tr
               SET attempts = tr.attempts + 1,
                   failed_attempts = tr.failed_attempts + 1,
                   last_error = left(p_error, 500),
                   dead_lettered_at = CASE WHEN tr.failed_attempts + 1 >= p_max_attempts
                                           THEN v_now END,
                   next_attempt_at = CASE WHEN tr.failed_attempts + 1 < p_max_attempts
                                          THEN v_now + make_interval(secs => delay / 1000) END,
                   retry_message = CASE WHEN tr.failed_attempts + 1 < p_max_attempts
                                        THEN p_message END
             WHERE tr.id = ANY (locked)
            RETURNING tr.id AS tid, tr.dead_lettered_at IS NOT NULL AS dead)
        SELECT c.tid, CASE WHEN c.dead THEN 'dead-lettered' ELSE 'retry' END,
               CASE WHEN NOT c.dead THEN delay::integer END
          FROM counted c;
END;
$$;

-- settle_transfers as in 0011, with chains. Any id of `p_ids` that is a leg of a chain brings
-- the whole chain: its row is locked (SKIP LOCKED: another transaction settling the chain
-- has it, and this one leaves the chain alone), then all its pending legs (SKIP LOCKED). The
-- chain is attempted only when every leg is pending, locked here and due; otherwise its
-- legs are left as they are ('skipped'). Then, as one unit:
--
-- * When one leg has run out of attempts or was dead-lettered, every leg is dead-lettered.
-- * When the accounts of one leg could not be locked (the second pass), a failed attempt is
--   counted on every leg.
-- * The legs are checked in id order against the balances the earlier transfers of this
--   call and the chain's own earlier legs leave; if one fails, every leg fails: that leg
--   with its own code (insufficient_funds, balance_limit_exceeded), the others with
--   'linked_transfer_failed', and no balance moves. Otherwise every leg settles.
--
-- A chain is decided where its lowest leg falls in id order among the other transfers. Rows
-- are returned for every leg decided, asked for or not.
CREATE OR REPLACE FUNCTION settle_transfers(
    p_ids bigint[], p_message text,
    p_max_attempts integer, p_min_backoff_ms integer, p_max_backoff_ms integer)
RETURNS TABLE (id bigint, status text, failure_code text, latency double precision,
               retry_ms integer, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    t_ids      bigint[];
    t_from     bigint[];
    t_to       bigint[];
    t_amount   bigint[];
    t_created  timestamptz[];
    t_failed   integer[];
    t_chain    bigint[];
    t_dead     boolean[];
    c_ids      bigint[];
    c_spent    bigint[];
    spent      bigint[] := '{}';
    g_ids      bigint[] := '{}';
    g_from     bigint[] := '{}';
    g_to       bigint[] := '{}';
    g_amount   bigint[] := '{}';
    g_created  timestamptz[] := '{}';
    g_chain    bigint[] := '{}';
    b_ids      bigint[] := '{}';
    a_ids      bigint[];
    a_balance  bigint[];
    a_negative boolean[];
    c_balance  bigint[];
    done       bigint[];
    culprit    bigint;
    culprit_code text;
    ok_ids     bigint[] := '{}';
    ok_from    bigint[] := '{}';
    ok_to      bigint[] := '{}';
    ok_amount  bigint[] := '{}';
    ok_created timestamptz[] := '{}';
    no_ids     bigint[] := '{}';
    no_codes   text[] := '{}';
    no_created timestamptz[] := '{}';
    r_ids      bigint[] := '{}';
    r_status   text[] := '{}';
    r_delay    integer;
    second     boolean := false;
    err_state  text;
    err_text   text;
    err        text;
    s          integer;
    d          integer;
    code       text;
BEGIN
    -- The chains named, those whose row this transaction can lock.
    SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') INTO c_ids
      FROM (SELECT ch.id FROM transfer_chains ch
             WHERE ch.id IN (SELECT tr.chain_id FROM transfers tr
                              WHERE tr.id = ANY (p_ids) AND tr.chain_id IS NOT NULL
                                AND tr.status = 'pending')
             ORDER BY ch.id
               FOR NO KEY UPDATE SKIP LOCKED) c;

    -- Transfers (outside chains) and legs (of those chains) in one ascending id order. A leg
    -- dead-lettered before is taken too: its chain is dead-lettered whole below. Without
    -- chains, the statement of 0011 (its plan: the primary key alone).
    IF cardinality(c_ids) = 0 THEN
        SELECT array_agg(p.id ORDER BY p.id), array_agg(p.from_account_id ORDER BY p.id),
               array_agg(p.to_account_id ORDER BY p.id), array_agg(p.amount ORDER BY p.id),
               array_agg(p.created_at ORDER BY p.id),
               array_agg(p.failed_attempts ORDER BY p.id),
               array_agg(NULL::bigint ORDER BY p.id), array_agg(false ORDER BY p.id)
          INTO t_ids, t_from, t_to, t_amount, t_created, t_failed, t_chain, t_dead
          FROM (SELECT tr.id, tr.from_account_id, tr.to_account_id, tr.amount,
                       tr.created_at, tr.failed_attempts
                  FROM transfers tr
                 WHERE tr.id = ANY (p_ids) AND tr.status = 'pending'
                   AND tr.chain_id IS NULL AND tr.dead_lettered_at IS NULL
                   AND (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                        OR tr.retry_message = p_message)
                 ORDER BY tr.id
                   FOR NO KEY UPDATE SKIP LOCKED) p;
    ELSE
        SELECT array_agg(p.id ORDER BY p.id), array_agg(p.from_account_id ORDER BY p.id),
               array_agg(p.to_account_id ORDER BY p.id), array_agg(p.amount ORDER BY p.id),
               array_agg(p.created_at ORDER BY p.id),
               array_agg(p.failed_attempts ORDER BY p.id),
               array_agg(p.chain_id ORDER BY p.id),
               array_agg(p.dead_lettered_at IS NOT NULL ORDER BY p.id)
          INTO t_ids, t_from, t_to, t_amount, t_created, t_failed, t_chain, t_dead
          FROM (SELECT tr.id, tr.from_account_id, tr.to_account_id, tr.amount,
                       tr.created_at, tr.failed_attempts, tr.chain_id, tr.dead_lettered_at
                  FROM transfers tr
                 WHERE tr.status = 'pending'
                   AND ((tr.id = ANY (p_ids) AND tr.chain_id IS NULL
                         AND tr.dead_lettered_at IS NULL
                         AND (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                              OR tr.retry_message = p_message))
                        OR tr.chain_id = ANY (c_ids))
                 ORDER BY tr.id
                   FOR NO KEY UPDATE SKIP LOCKED) p;
    END IF;

    IF t_ids IS NOT NULL AND cardinality(c_ids) > 0 THEN
        -- A chain is attempted only whole and due (its legs share their retry schedule).
        SELECT coalesce(array_agg(ch.id), '{}') INTO c_ids
          FROM transfer_chains ch
          JOIN (SELECT x.chain, count(*) AS n
                  FROM unnest(t_ids, t_chain) AS x (tid, chain)
                 WHERE x.chain IS NOT NULL
                 GROUP BY x.chain) got ON got.chain = ch.id
         WHERE got.n = ch.legs
           AND NOT EXISTS (
               SELECT 1 FROM transfers tr
                WHERE tr.chain_id = ch.id AND tr.dead_lettered_at IS NULL
                  AND NOT (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                           OR tr.retry_message = p_message));
        SELECT array_agg(x.tid ORDER BY x.tid), array_agg(x.src ORDER BY x.tid),
               array_agg(x.dst ORDER BY x.tid), array_agg(x.amount ORDER BY x.tid),
               array_agg(x.created ORDER BY x.tid), array_agg(x.failed ORDER BY x.tid),
               array_agg(x.chain ORDER BY x.tid), array_agg(x.dead ORDER BY x.tid)
          INTO t_ids, t_from, t_to, t_amount, t_created, t_failed, t_chain, t_dead
          FROM unnest(t_ids, t_from, t_to, t_amount, t_created, t_failed, t_chain, t_dead)
               AS x (tid, src, dst, amount, created, failed, chain, dead)
         WHERE x.chain IS NULL OR x.chain = ANY (c_ids);
    END IF;

    IF t_ids IS NOT NULL THEN
        -- Chains with a leg out of attempts (or dead-lettered before) are dead-lettered whole.
        SELECT coalesce(array_agg(DISTINCT x.chain), '{}') INTO c_spent
          FROM unnest(t_chain, t_failed, t_dead) AS x (chain, failed, dead)
         WHERE x.chain IS NOT NULL AND (x.failed >= p_max_attempts OR x.dead);
        IF p_max_attempts <= ANY (t_failed) OR cardinality(c_spent) > 0 THEN
            -- The budget was lowered since: those past it are dead-lettered unattempted.
            FOR i IN 1 .. array_length(t_ids, 1) LOOP
                IF t_failed[i] >= p_max_attempts OR t_chain[i] = ANY (c_spent) THEN
                    spent := spent || t_ids[i];
                ELSE
                    g_ids := g_ids || t_ids[i];
                    g_from := g_from || t_from[i];
                    g_to := g_to || t_to[i];
                    g_amount := g_amount || t_amount[i];
                    g_created := g_created || t_created[i];
                    g_chain := g_chain || t_chain[i];
                END IF;
            END LOOP;
            UPDATE transfers tr
               SET dead_lettered_at = clock_timestamp(), next_attempt_at = NULL,
                   retry_message = NULL
             WHERE tr.id = ANY (spent) AND tr.dead_lettered_at IS NULL;
        ELSE
            g_ids := t_ids;
            g_from := t_from;
            g_to := t_to;
            g_amount := t_amount;
            g_created := t_created;
            g_chain := t_chain;
        END IF;
    END IF;

    WHILE cardinality(g_ids) > 0 LOOP
        BEGIN
            IF NOT second THEN
                SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance ORDER BY a.id),
                       array_agg(a.allow_negative_balance ORDER BY a.id)
                  INTO a_ids, a_balance, a_negative
                  FROM (SELECT ac.id, ac.balance, ac.allow_negative_balance
                          FROM accounts ac
                         WHERE ac.id = ANY (g_from || g_to)
                         ORDER BY ac.id
                           FOR NO KEY UPDATE) a;
            ELSE
                -- The accounts free now; the transfers missing one fail this attempt, and
                -- with a leg, its whole chain.
                SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance ORDER BY a.id),
                       array_agg(a.allow_negative_balance ORDER BY a.id)
                  INTO a_ids, a_balance, a_negative
                  FROM (SELECT ac.id, ac.balance, ac.allow_negative_balance
                          FROM accounts ac
                         WHERE ac.id = ANY (g_from || g_to)
                         ORDER BY ac.id
                           FOR NO KEY UPDATE SKIP LOCKED) a;
                a_ids := coalesce(a_ids, '{}');
                SELECT coalesce(array_agg(x.tid ORDER BY x.tid), '{}') INTO b_ids
                  FROM unnest(g_ids, g_from, g_to, g_chain) AS x (tid, src, dst, chain)
                 WHERE x.src <> ALL (a_ids) OR x.dst <> ALL (a_ids)
                    OR x.chain IN (SELECT y.chain
                                     FROM unnest(g_from, g_to, g_chain) AS y (src, dst, chain)
                                    WHERE y.src <> ALL (a_ids) OR y.dst <> ALL (a_ids));
                SELECT coalesce(array_agg(x.tid ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.src ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.dst ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.amount ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.created ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.chain ORDER BY x.tid), '{}')
                  INTO g_ids, g_from, g_to, g_amount, g_created, g_chain
                  FROM unnest(g_ids, g_from, g_to, g_amount, g_created, g_chain)
                       AS x (tid, src, dst, amount, created, chain)
                 WHERE x.tid <> ALL (b_ids);
            END IF;

            done := '{}';
            FOR i IN 1 .. coalesce(array_length(g_ids, 1), 0) LOOP
                IF g_chain[i] IS NOT NULL THEN
                    -- The chain's lowest leg: decide every leg of it now, on a copy of the
                    -- balances that is kept only if every leg passes.
                    CONTINUE WHEN g_chain[i] = ANY (done);
                    done := done || g_chain[i];
                    c_balance := a_balance;
                    culprit := NULL;
                    culprit_code := NULL;
                    FOR j IN i .. array_length(g_ids, 1) LOOP
                        CONTINUE WHEN g_chain[j] IS DISTINCT FROM g_chain[i];
                        s := array_position(a_ids, g_from[j]);
                        d := array_position(a_ids, g_to[j]);
                        IF NOT a_negative[s] AND c_balance[s] < g_amount[j] THEN
                            culprit_code := 'insufficient_funds';
                        ELSIF c_balance[s] < -9223372036854775807 + g_amount[j]
                              OR c_balance[d] > 9223372036854775807 - g_amount[j] THEN
                            culprit_code := 'balance_limit_exceeded';
                        END IF;
                        IF culprit_code IS NOT NULL THEN
                            culprit := g_ids[j];
                            EXIT;
                        END IF;
                        c_balance[s] := c_balance[s] - g_amount[j];
                        c_balance[d] := c_balance[d] + g_amount[j];
                    END LOOP;
                    IF culprit IS NULL THEN
                        a_balance := c_balance;
                    END IF;
                    FOR j IN i .. array_length(g_ids, 1) LOOP
                        CONTINUE WHEN g_chain[j] IS DISTINCT FROM g_chain[i];
                        IF culprit IS NULL THEN
                            ok_ids := ok_ids || g_ids[j];
                            ok_from := ok_from || g_from[j];
                            ok_to := ok_to || g_to[j];
                            ok_amount := ok_amount || g_amount[j];
                            ok_created := ok_created || g_created[j];
                        ELSE
                            no_ids := no_ids || g_ids[j];
                            no_codes := no_codes || CASE WHEN g_ids[j] = culprit
                                                         THEN culprit_code
                                                         ELSE 'linked_transfer_failed' END;
                            no_created := no_created || g_created[j];
                        END IF;
                    END LOOP;
                    CONTINUE;
                END IF;
                s := array_position(a_ids, g_from[i]);
                d := array_position(a_ids, g_to[i]);
                code := NULL;
                IF NOT a_negative[s] AND a_balance[s] < g_amount[i] THEN
                    code := 'insufficient_funds';
                ELSIF a_balance[s] < -9223372036854775807 + g_amount[i]
                      OR a_balance[d] > 9223372036854775807 - g_amount[i] THEN
                    code := 'balance_limit_exceeded';
                END IF;
                IF code IS NULL THEN
                    a_balance[s] := a_balance[s] - g_amount[i];
                    a_balance[d] := a_balance[d] + g_amount[i];
                    ok_ids := ok_ids || g_ids[i];
                    ok_from := ok_from || g_from[i];
                    ok_to := ok_to || g_to[i];
                    ok_amount := ok_amount || g_amount[i];
                    ok_created := ok_created || g_created[i];
                ELSE
                    no_ids := no_ids || g_ids[i];
                    no_codes := no_codes || code;
                    no_created := no_created || g_created[i];
                END IF;
            END LOOP;

            UPDATE accounts ac SET balance = u.balance
              FROM unnest(a_ids, a_balance) AS u (id, balance)
             WHERE ac.id = u.id AND ac.balance <> u.balance;

            INSERT INTO entries (transfer_id, account_id, amount)
            SELECT e.transfer_id, e.account_id, e.amount
              FROM unnest(ok_ids, ok_from, ok_to, ok_amount) AS o (tid, src, dst, amount)
              CROSS JOIN LATERAL (VALUES (o.tid, o.src, -o.amount, 1),
                                         (o.tid, o.dst, o.amount, 2))
                   AS e (transfer_id, account_id, amount, side)
             ORDER BY e.transfer_id, e.side;

            UPDATE transfers tr
               SET status = 'settled', attempts = tr.attempts + 1, settled_at = now(),
                   finished_at = now(), next_attempt_at = NULL, retry_message = NULL
             WHERE tr.id = ANY (ok_ids);

            UPDATE transfers tr
               SET status = 'failed', failure_code = f.code, attempts = tr.attempts + 1,
                   finished_at = now(), next_attempt_at = NULL, retry_message = NULL
              FROM unnest(no_ids, no_codes) AS f (id, code)
             WHERE tr.id = f.id;
            EXIT;
        EXCEPTION WHEN lock_not_available OR deadlock_detected OR serialization_failure THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_text = MESSAGE_TEXT;
            err := CASE err_state
                       WHEN '55P03' THEN 'LockNotAvailable'
                       WHEN '40P01' THEN 'DeadlockDetected'
                       ELSE 'SerializationFailure'
                   END || ': ' || err_text;
            ok_ids := '{}'; ok_from := '{}'; ok_to := '{}'; ok_amount := '{}';
            ok_created := '{}'; no_ids := '{}'; no_codes := '{}'; no_created := '{}';
            IF second THEN  -- never expected: nothing in the second pass waits
                b_ids := b_ids || g_ids;
                EXIT;
            END IF;
            second := true;
        END;
    END LOOP;

    IF cardinality(b_ids) > 0 THEN
        SELECT coalesce(array_agg(r.id), '{}'), coalesce(array_agg(r.status), '{}'),
               max(r.retry_ms)
          INTO r_ids, r_status, r_delay
          FROM record_failed_attempt(b_ids, p_message, err, p_max_attempts,
                                     p_min_backoff_ms, p_max_backoff_ms) r;
    END IF;

    RETURN QUERY
        SELECT o.tid, 'settled'::text, NULL::text, extract(epoch FROM now() - o.created)::float8,
               NULL::integer, NULL::text
          FROM unnest(ok_ids, ok_created) AS o (tid, created)
        UNION ALL
        SELECT f.tid, 'failed'::text, f.code, extract(epoch FROM now() - f.created)::float8,
               NULL::integer, NULL::text
          FROM unnest(no_ids, no_codes, no_created) AS f (tid, code, created)
        UNION ALL
        SELECT x.tid, 'dead-lettered'::text, NULL::text, NULL::float8, NULL::integer, NULL::text
          FROM unnest(spent) AS x (tid)
        UNION ALL
        SELECT r.tid, r.state, NULL::text, NULL::float8,
               CASE WHEN r.state = 'retry' THEN r_delay END, err
          FROM unnest(r_ids, r_status) AS r (tid, state)
        UNION ALL
        SELECT q.qid,
               CASE WHEN tr.status IS NULL THEN 'missing'
                    WHEN tr.status = 'pending' THEN 'skipped'
                    ELSE tr.status END,
               tr.failure_code, NULL::float8, NULL::integer, NULL::text
          FROM (SELECT DISTINCT u.qid FROM unnest(p_ids) AS u (qid)) q
          LEFT JOIN transfers tr ON tr.id = q.qid
         WHERE q.qid <> ALL (coalesce(t_ids, '{}'));
END;
$$;
