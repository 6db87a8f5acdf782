-- The claim as one round trip (jobd_claim), and first come, first served among jobs
-- (and webhooks) due at the same time.
--
-- The due indexes gain seq as their last key: the claim orders a tenant's jobs by
-- priority DESC, next_run_at, seq (SQLite's rowid breaks those ties the same way), and
-- with seq in the index a claim reads exactly the rows it takes, already in order, even
-- when a million jobs share one due time.

DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (tenant_id, priority DESC, next_run_at, seq)
    WHERE status IN ('queued', 'retry');

DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, seq) WHERE status = 'pending';

-- jobd_claim(now, limit, owner, lease expiry, rotation's after): claim up to p_limit due
-- jobs for p_owner, fair across tenants, in one round trip. Returns the claimed jobs in
-- the order they were chosen, each row also carrying the round's last_tenant (where the
-- next round's rotation starts after) and queue_was_empty (no job queued or waiting for
-- a retry at all, due or not); a round that claims nothing returns one row with those
-- two and NULL job columns.
--
-- The round, as jobd.store.scheduling.claim_due_jobs does it on SQLite:
-- 1. The waiting tenants (a queued or retry job, due or not), by a skip scan of jobs_due
--    (one index seek per tenant), in rotation order: the ids after p_after, then the
--    rest, byte order (COLLATE "C").
-- 2. Each tenant's room: p_limit, or less under its max_concurrency (its cap minus its
--    running jobs). To make the cap exact with claims running at once (other pools,
--    other nodes), the capped waiting tenants' rows are locked first (FOR NO KEY UPDATE,
--    in id order so that claims cannot deadlock; it does not block the KEY SHARE locks
--    of job inserts), and the running jobs are counted afterwards, by a statement whose
--    snapshot is taken after the locks were granted: it sees every job that a claim
--    holding them before committed. (A VOLATILE function's statements each take a new
--    snapshot under READ COMMITTED.)
-- 3. Every tenant's best job (priority DESC, next_run_at, seq) before any tenant's
--    second: the chosen jobs are the first p_limit of the tenants' due jobs taken rank
--    by rank, tenants in rotation order within a rank, each tenant's list cut at its
--    room. Tenants are looked at in rotation order until p_limit of them had a job to
--    give; the last one looked at is last_tenant. Tenants with nothing due or no room
--    do not use up the round.
--    Rather than reading every tenant's whole list, the function collects by levels:
--    each tenant with room gives up to ceil(p_limit / tenants) jobs, then each tenant
--    that gave all it was asked for (and has room left) gives up to ceil(what is still
--    missing / such tenants) more, and so on until p_limit are collected or no tenant
--    has more. Tenants still giving always hold the same number of jobs and every other
--    tenant fewer, so the rank-by-rank cut never needs a job that was not collected:
--    the result is that of the full lists.
--    Rows are locked FOR UPDATE SKIP LOCKED as they are read: a job another claim is
--    taking is stepped over, never waited for. A collected job that the cut leaves out
--    stays locked only until this transaction commits.
-- 4. The chosen jobs become running: attempts + 1, next_run_at NULL, the lease, started
--    now. They are updated by their ctid (locked by this transaction, so it is stable).
-- The skip scan orders by jobs_due's whole key so that no other index can serve it (the
-- planner would otherwise walk jobs_tenant_seq while statistics say most jobs wait,
-- stepping over every job already drained).
CREATE FUNCTION jobd_claim(p_now double precision, p_limit integer, p_owner text,
                           p_expires double precision, p_after text)
RETURNS TABLE (last_tenant text, queue_was_empty boolean, id text, tenant_id text,
               type text, payload text, attempt integer, max_attempts integer,
               timeout_seconds double precision, due_at double precision,
               webhook_url text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    waiting   text[];      -- tenants in rotation order
    room      integer[];   -- per tenant: how many more jobs it may take
    giving    boolean[];   -- per tenant: gave all it was asked for, may give more
    n         integer;
    i         integer;
    looked    text := p_after;
    nonempty  integer := 0;
    total     integer := 0;
    share     integer;
    ask       integer;
    active    integer;
    got       integer;
    level     integer := 0;
    got_tid   tid[];
    got_seq   bigint[];
    got_due   double precision[];
    c_tid     tid[] := '{}';
    c_seq     bigint[] := '{}';
    c_rank    integer[] := '{}';
    c_pos     integer[] := '{}';
    c_due     double precision[] := '{}';
BEGIN
    WITH RECURSIVE w (t) AS (
        (SELECT j.tenant_id FROM jobs j WHERE j.status IN ('queued', 'retry')
         ORDER BY j.tenant_id, j.priority DESC, j.next_run_at, j.seq LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant_id FROM jobs j
                WHERE j.status IN ('queued', 'retry') AND j.tenant_id > w.t
                ORDER BY j.tenant_id, j.priority DESC, j.next_run_at, j.seq LIMIT 1)
        FROM w WHERE w.t IS NOT NULL
    )
    SELECT array_agg(w.t ORDER BY coalesce(w.t <= p_after COLLATE "C", false), w.t)
    INTO waiting
    FROM w WHERE w.t IS NOT NULL;

    IF waiting IS NULL THEN
        RETURN QUERY SELECT p_after, true, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::integer, NULL::double precision,
                            NULL::double precision, NULL::text;
        RETURN;
    END IF;
    n := cardinality(waiting);

    PERFORM 1 FROM tenants t
    WHERE t.id = ANY (waiting) AND t.max_concurrency IS NOT NULL
    ORDER BY t.id
    FOR NO KEY UPDATE;
    IF FOUND THEN
        SELECT array_agg(CASE WHEN t.max_concurrency IS NULL THEN p_limit
                              ELSE least(p_limit, greatest(0, t.max_concurrency
                                                              - coalesce(r.n, 0))) END
                         ORDER BY w.ord)
        INTO room
        FROM unnest(waiting) WITH ORDINALITY AS w (t, ord)
        LEFT JOIN tenants t ON t.id = w.t
        LEFT JOIN (SELECT j.tenant_id, count(*)::integer AS n FROM jobs j
                   WHERE j.status = 'running' GROUP BY j.tenant_id) r ON r.tenant_id = w.t;
    ELSE
        room := array_fill(p_limit, ARRAY[n]);
    END IF;
    giving := array_fill(false, ARRAY[n]);

    share := (p_limit + n - 1) / n;
    LOOP
        FOR i IN 1 .. n LOOP
            IF level = 0 THEN  -- the first level looks at the tenants in rotation order
                EXIT WHEN nonempty >= p_limit;
                looked := waiting[i];
            ELSIF NOT giving[i] THEN
                CONTINUE;
            END IF;
            ask := least(share, room[i]);
            giving[i] := false;
            CONTINUE WHEN ask <= 0;
            SELECT array_agg(s.tid ORDER BY s.priority DESC, s.next_run_at, s.seq),
                   array_agg(s.seq ORDER BY s.priority DESC, s.next_run_at, s.seq),
                   array_agg(s.next_run_at ORDER BY s.priority DESC, s.next_run_at, s.seq)
            INTO got_tid, got_seq, got_due
            FROM (SELECT j.ctid AS tid, j.seq, j.priority, j.next_run_at FROM jobs j
                  WHERE j.tenant_id = waiting[i] AND j.status IN ('queued', 'retry')
                    AND j.next_run_at <= p_now AND j.seq <> ALL (c_seq)
                  ORDER BY j.priority DESC, j.next_run_at, j.seq
                  LIMIT ask
                  FOR UPDATE SKIP LOCKED) s;
            got := coalesce(cardinality(got_tid), 0);
            IF got > 0 THEN
                IF level = 0 THEN
                    nonempty := nonempty + 1;
                END IF;
                c_tid := c_tid || got_tid;
                c_seq := c_seq || got_seq;
                c_due := c_due || got_due;
                c_rank := c_rank || array(SELECT level + g FROM generate_series(1, got) g);
                c_pos := c_pos || array_fill(i, ARRAY[got]);
                total := total + got;
                room[i] := room[i] - got;
            END IF;
            giving[i] := got = ask AND room[i] > 0;
        END LOOP;
        level := level + share;
        SELECT count(*) INTO active FROM unnest(giving) g WHERE g;
        EXIT WHEN total >= p_limit OR active = 0;
        share := (p_limit - total + active - 1) / active;
    END LOOP;

    IF total = 0 THEN
        RETURN QUERY SELECT looked, false, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::integer, NULL::double precision,
                            NULL::double precision, NULL::text;
        RETURN;
    END IF;

    SELECT array_agg(c.tid ORDER BY c.rank, c.pos), array_agg(c.seq ORDER BY c.rank, c.pos),
           array_agg(c.due ORDER BY c.rank, c.pos)
    INTO got_tid, got_seq, got_due
    FROM (SELECT * FROM unnest(c_tid, c_seq, c_due, c_rank, c_pos)
                        AS u (tid, seq, due, rank, pos)
          ORDER BY u.rank, u.pos LIMIT p_limit) c;

    -- By ctid (a TID scan), and put in order by array_position: no join whose plan
    -- depends on how many rows the arrays hold (a cached plan cannot know).
    RETURN QUERY
    WITH claimed AS (
        UPDATE jobs j
        SET status = 'running', attempts = j.attempts + 1, next_run_at = NULL,
            lease_owner = p_owner, lease_expires_at = p_expires, started_at = p_now,
            updated_at = p_now
        WHERE j.ctid = ANY (got_tid)
        RETURNING j.seq, j.id, j.tenant_id, j.type, j.payload, j.attempts, j.max_attempts,
                  j.timeout_seconds, j.webhook_url
    )
    SELECT looked, false, claimed.id, claimed.tenant_id, claimed.type, claimed.payload,
           claimed.attempts, claimed.max_attempts, claimed.timeout_seconds,
           got_due[array_position(got_seq, claimed.seq)], claimed.webhook_url
    FROM claimed
    ORDER BY array_position(got_seq, claimed.seq);
END;
$$;
