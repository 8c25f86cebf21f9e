-- Settles a batch of transfers in the caller's transaction, in one round trip: a message
-- carries many transfer ids, and one commit settles them all.
--
-- Locks: first the batch's pending transfers in ascending id order, then all their accounts in
-- one ascending id order with FOR NO KEY UPDATE (no conflict with the FOR KEY SHARE locks that
-- foreign-key inserts take). Every settler takes transfers before accounts and each kind in
-- ascending order (settle_transfer(id) takes one transfer, then its two accounts), so
-- concurrent batches sharing transfers or accounts wait for one another but never deadlock.
--
-- A transfer named twice, or one that another batch settled first, is not settled again: a
-- row that is no longer pending once its lock is granted drops out (READ COMMITTED re-checks
-- the WHERE clause on the new row version) and is reported with its final status.
--
-- Inside the batch transfers are decided in ascending id order against running balances, so
-- a transfer's funds check sees the transfers before it; each gets its own outcome (settled,
-- or failed with insufficient_funds / balance_limit_exceeded). Then each touched account is
-- updated once, the entries are inserted (debit then credit, transfer by transfer), and the
-- transfers are marked, set-wise.
--
-- Returns one row per distinct id asked for: 'settled', 'failed' (with failure_code), or
-- 'missing' for an id that names no transfer ('pending' never); `latency` is the seconds from
-- acceptance (created_at) to this settlement for the transfers this call settled, else NULL.
CREATE FUNCTION settle_transfers(p_ids bigint[])
RETURNS TABLE (id bigint, status text, failure_code text, latency double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t_ids      bigint[];
    t_from     bigint[];
    t_to       bigint[];
    t_amount   bigint[];
    t_created  timestamptz[];
    ok_created timestamptz[] := '{}';
    a_ids      bigint[];
    a_balance  bigint[];
    a_negative boolean[];
    ok_ids     bigint[] := '{}';
    ok_from    bigint[] := '{}';
    ok_to      bigint[] := '{}';
    ok_amount  bigint[] := '{}';
    no_ids     bigint[] := '{}';
    no_codes   text[] := '{}';
    s          integer;
    d          integer;
    code       text;
BEGIN
    SELECT array_agg(p.id ORDER BY p.id), array_agg(p.from_account_id ORDER BY p.id),
           array_agg(p.to_account_id ORDER BY p.id), array_agg(p.amount ORDER BY p.id),
           array_agg(p.created_at ORDER BY p.id)
      INTO t_ids, t_from, t_to, t_amount, t_created
      FROM (SELECT tr.id, tr.from_account_id, tr.to_account_id, tr.amount, tr.created_at
              FROM transfers tr
             WHERE tr.id = ANY (p_ids) AND tr.status = 'pending'
             ORDER BY tr.id
               FOR UPDATE) p;

    IF t_ids IS NOT NULL THEN
        SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance ORDER BY a.id),
               array_agg(a.allow_negative_balance ORDER BY a.id)
          INTO a_ids, a_balance, a_negative
          FROM (SELECT ac.id, ac.balance, ac.allow_negative_balance
                  FROM accounts ac
                 WHERE ac.id = ANY (t_from || t_to)
                 ORDER BY ac.id
                   FOR NO KEY UPDATE) a;

        FOR i IN 1 .. array_length(t_ids, 1) LOOP
            s := array_position(a_ids, t_from[i]);
            d := array_position(a_ids, t_to[i]);
            code := NULL;
            IF NOT a_negative[s] AND a_balance[s] < t_amount[i] THEN
                code := 'insufficient_funds';
            ELSIF a_balance[s] < -9223372036854775807 + t_amount[i]
                  OR a_balance[d] > 9223372036854775807 - t_amount[i] THEN
                code := 'balance_limit_exceeded';
            END IF;
            IF code IS NULL THEN
                a_balance[s] := a_balance[s] - t_amount[i];
                a_balance[d] := a_balance[d] + t_amount[i];
                ok_ids := ok_ids || t_ids[i];
                ok_from := ok_from || t_from[i];
                ok_to := ok_to || t_to[i];
                ok_amount := ok_amount || t_amount[i];
                ok_created := ok_created || t_created[i];
            ELSE
                no_ids := no_ids || t_ids[i];
                no_codes := no_codes || code;
            END IF;
        END LOOP;

        UPDATE accounts ac SET balance = u.balance
          FROM unnest(a_ids, a_balance) AS u (id, balance)
         WHERE ac.id = u.id AND ac.balance <> u.balance;

        INSERT INTO entries (transfer_id, account_id, amount)
        SELECT e.transfer_id, e.account_id, e.amount
          FROM unnest(ok_ids, ok_from, ok_to, ok_amount) AS o (tid, src, dst, amount)
          CROSS JOIN LATERAL (VALUES (o.tid, o.src, -o.amount, 1), (o.tid, o.dst, o.amount, 2))
               AS e (transfer_id, account_id, amount, side)
         ORDER BY e.transfer_id, e.side;

        UPDATE transfers tr
           SET status = 'settled', attempts = tr.attempts + 1, settled_at = now(),
               finished_at = now(), dead_lettered_at = NULL
         WHERE tr.id = ANY (ok_ids);

        UPDATE transfers tr
           SET status = 'failed', failure_code = f.code, attempts = tr.attempts + 1,
               finished_at = now(), dead_lettered_at = NULL
          FROM unnest(no_ids, no_codes) AS f (id, code)
         WHERE tr.id = f.id;
    END IF;

    RETURN QUERY
        SELECT o.tid, 'settled'::text, NULL::text, extract(epoch FROM now() - o.created)::float8
          FROM unnest(ok_ids, ok_created) AS o (tid, created)
        UNION ALL
        SELECT f.tid, 'failed'::text, f.code, NULL::float8
          FROM unnest(no_ids, no_codes) AS f (tid, code)
        UNION ALL
        SELECT q.qid, coalesce(tr.status, 'missing'), tr.failure_code, NULL::float8
          FROM (SELECT DISTINCT u.qid FROM unnest(p_ids) AS u (qid)) q
          LEFT JOIN transfers tr ON tr.id = q.qid
         WHERE q.qid <> ALL (coalesce(t_ids, '{}'));
END;
$$;
