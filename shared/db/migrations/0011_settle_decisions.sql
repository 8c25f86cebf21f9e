-- settle_transfers as in 0010, except that `latency` is also given for the transfers this
-- call failed (the seconds from acceptance to that decision), not only for those it settled:
-- a 'settled' or 'failed' row with a latency is a decision this call made, one without is a
-- transfer that was already final, so that the workers count each outcome once
-- (settle_transfers_finished_total) however often its message is delivered.
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
    spent      bigint[] := '{}';
    g_ids      bigint[] := '{}';
    g_from     bigint[] := '{}';
    g_to       bigint[] := '{}';
    g_amount   bigint[] := '{}';
    g_created  timestamptz[] := '{}';
    b_ids      bigint[] := '{}';
    a_ids      bigint[];
    a_balance  bigint[];
    a_negative boolean[];
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
    SELECT array_agg(p.id ORDER BY p.id), array_agg(p.from_account_id ORDER BY p.id),
           array_agg(p.to_account_id ORDER BY p.id), array_agg(p.amount ORDER BY p.id),
           array_agg(p.created_at ORDER BY p.id), array_agg(p.failed_attempts ORDER BY p.id)
      INTO t_ids, t_from, t_to, t_amount, t_created, t_failed
      FROM (SELECT tr.id, tr.from_account_id, tr.to_account_id, tr.amount, tr.created_at,
                   tr.failed_attempts
              FROM transfers tr
             WHERE tr.id = ANY (p_ids) AND tr.status = 'pending'
               AND tr.dead_lettered_at IS NULL
               AND (tr.next_attempt_at IS NULL OR tr.next_attempt_at <= now()
                    OR tr.retry_message = p_message)
             ORDER BY tr.id
               FOR NO KEY UPDATE SKIP LOCKED) p;

    IF t_ids IS NOT NULL THEN
        IF p_max_attempts <= ANY (t_failed) THEN
            -- The budget was lowered since: those past it are dead-lettered unattempted.
            FOR i IN 1 .. array_length(t_ids, 1) LOOP
                IF t_failed[i] >= p_max_attempts THEN
                    spent := spent || t_ids[i];
                ELSE
                    g_ids := g_ids || t_ids[i];
                    g_from := g_from || t_from[i];
                    g_to := g_to || t_to[i];
                    g_amount := g_amount || t_amount[i];
                    g_created := g_created || t_created[i];
                END IF;
            END LOOP;
            UPDATE transfers tr
               SET dead_lettered_at = clock_timestamp(), next_attempt_at = NULL,
                   retry_message = NULL
             WHERE tr.id = ANY (spent);
        ELSE
            g_ids := t_ids;
            g_from := t_from;
            g_to := t_to;
            g_amount := t_amount;
            g_created := t_created;
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
                -- The accounts free now; the transfers missing one fail this attempt.
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
                  FROM unnest(g_ids, g_from, g_to) AS x (tid, src, dst)
                 WHERE x.src <> ALL (a_ids) OR x.dst <> ALL (a_ids);
                SELECT coalesce(array_agg(x.tid ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.src ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.dst ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.amount ORDER BY x.tid), '{}'),
                       coalesce(array_agg(x.created ORDER BY x.tid), '{}')
                  INTO g_ids, g_from, g_to, g_amount, g_created
                  FROM unnest(g_ids, g_from, g_to, g_amount, g_created)
                       AS x (tid, src, dst, amount, created)
                 WHERE x.tid <> ALL (b_ids);
            END IF;

            FOR i IN 1 .. coalesce(array_length(g_ids, 1), 0) LOOP
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
