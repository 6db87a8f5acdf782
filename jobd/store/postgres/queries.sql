-- Every SQL statement the PostgreSQL backend runs after migrations, by name.
-- Times are bound as parameters ($n, unix seconds from jobd's clock); the database's own
-- clock is never read. Statements that take many rows (the batches: new jobs, finishes,
-- webhook attempts) take them as one array of a row type (migration 0004) and unnest
-- it: one statement (and one prepared plan) whatever the count.

-- tenants ------------------------------------------------------------------------------

-- name: tenant_insert
INSERT INTO tenants (id, api_key_hash, api_key_prefix, webhook_secret, rate, burst,
                     max_concurrency, disabled, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, false, $8, $8)
RETURNING *;

-- name: tenant_get
SELECT * FROM tenants WHERE id = $1;

-- name: tenant_list
SELECT * FROM tenants ORDER BY id;

-- name: tenant_by_key_hash
SELECT * FROM tenants WHERE api_key_hash = $1;

-- name: tenant_webhook_secret
SELECT webhook_secret FROM tenants WHERE id = $1;

-- A limit left NULL keeps its value; a max_concurrency of 0 or NULL keeps the cap, $4
-- clears it.
-- name: tenant_update_limits
UPDATE tenants SET rate = coalesce($2, rate), burst = coalesce($3, burst),
                   max_concurrency = CASE WHEN $4 THEN NULL
                                          ELSE coalesce(nullif($5, 0), max_concurrency) END,
                   updated_at = $6
WHERE id = $1
RETURNING *;

-- name: tenant_set_disabled
UPDATE tenants SET disabled = $2, updated_at = $3 WHERE id = $1 RETURNING *;

-- name: tenant_set_key
UPDATE tenants SET api_key_hash = $2, api_key_prefix = $3, updated_at = $4
WHERE id = $1
RETURNING *;

-- name: tenant_key_is_live
SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1 AND api_key_hash = $2 AND NOT disabled);

-- jobs: creation --------------------------------------------------------------------

-- New jobs, one row each. A job whose tenant already has a job holding its
-- Idempotency-Key is not inserted (ON CONFLICT on jobs_idempotency), nor one whose API
-- key hash (NULL: not checked) is no longer its tenant's live key. A job with a lease
-- owner is created running: its first attempt starts now, held until `expires`
-- (jobd.models.StartLease). Returns the ids inserted.
-- name: jobs_insert
INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, max_attempts,
                  timeout_seconds, run_at, next_run_at, webhook_url, idempotency_key,
                  body_hash, created_at, updated_at, lease_owner, lease_expires_at,
                  started_at)
SELECT v.id, v.tenant_id, v.type, v.payload,
       CASE WHEN v.owner IS NULL THEN 'queued' ELSE 'running' END,
       v.priority, CASE WHEN v.owner IS NULL THEN 0 ELSE 1 END, v.max_attempts,
       v.timeout_seconds, v.run_at, CASE WHEN v.owner IS NULL THEN v.run_at END,
       v.webhook_url, v.idempotency_key, v.body_hash, v.now, v.now, v.owner, v.expires,
       CASE WHEN v.owner IS NOT NULL THEN v.now END
FROM unnest($1::jobs_insert_row[]) AS v
WHERE v.api_key_hash IS NULL
   OR EXISTS (SELECT 1 FROM tenants t
              WHERE t.id = v.tenant_id AND t.api_key_hash = v.api_key_hash AND NOT t.disabled)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING id;

-- The job holding a tenant's Idempotency-Key, locked: a replay, a 409, or an expired key
-- that this transaction releases.
-- name: job_holding_key
SELECT id, body_hash, created_at FROM jobs
WHERE tenant_id = $1 AND idempotency_key = $2
FOR UPDATE;

-- name: job_release_key
UPDATE jobs SET idempotency_key = NULL WHERE id = $1;

-- jobs: reads -----------------------------------------------------------------------

-- name: job_get
SELECT * FROM jobs WHERE id = $1;

-- name: job_get_for_tenant
SELECT * FROM jobs WHERE id = $1 AND tenant_id = $2;

-- name: job_lock
SELECT * FROM jobs WHERE id = $1 FOR UPDATE;

-- name: deliveries_of_job
SELECT * FROM deliveries WHERE job_id = $1 ORDER BY seq;

-- jobs: the operator's transitions ----------------------------------------------------

-- name: job_cancel_waiting
UPDATE jobs SET status = 'cancelled', completed_at = $2, next_run_at = NULL, updated_at = $2
WHERE id = $1 AND status IN ('queued', 'retry')
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- name: job_request_cancel
UPDATE jobs SET cancel_requested = true, updated_at = $2
WHERE id = $1 AND status = 'running';

-- name: job_retry_final
UPDATE jobs SET status = 'queued', next_run_at = $2, cancel_requested = false,
                max_attempts = greatest(max_attempts, attempts + 1), result = NULL,
                completed_at = NULL, updated_at = $2
WHERE id = $1 AND status IN ('fatal', 'cancelled');

-- name: delivery_insert
INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, attempts,
                        next_attempt_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6);

-- jobs: the scheduler and the workers -------------------------------------------------

-- See migrations/0002_claim.sql.
-- name: jobs_claim
SELECT * FROM jobd_claim($1, $2, $3, $4, $5);

-- Finish running jobs, fenced (id, status running, attempts = the attempt, lease_owner =
-- the owner), and write the webhook of each one finished (a job with a url and a body
-- here), in the same statement: a job whose claim is no longer current gets neither. A
-- webhook with a lease ($10) is created `sending` under it, held by the job's owner (a
-- direct dispatch), else
-- `pending`, due now. `errors` gains {attempt, at, error} when there is an error.
-- Returns the ids finished.
-- The status is compared with a subquery's 'running', which no plan can see through: so
-- no plan, also not the cached generic one (which knows neither how many rows come nor
-- how many jobs run), reads the jobs through jobs_running and then the rows again for
-- each of them. The one way left is the rows' ids, through jobs_id_key.
-- name: jobs_finish
WITH v AS (
    SELECT * FROM unnest($1::jobs_finish_row[])
), finished AS (
    UPDATE jobs j
    SET status = v.status, result = v.result, last_error = v.error,
        errors = CASE WHEN v.error IS NULL THEN j.errors
                      ELSE coalesce(j.errors, '[]'::jsonb) || jsonb_build_array(
                          jsonb_build_object('attempt', j.attempts, 'at', v.now,
                                             'error', v.error)) END,
        completed_at = v.now, next_run_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
        updated_at = v.now
    FROM v
    WHERE j.id = v.id AND j.status = (SELECT 'running') AND j.attempts = v.attempt
      AND j.lease_owner = v.owner
    RETURNING j.id, j.tenant_id, j.webhook_url, v.delivery_id, v.body, v.now, v.lease, v.owner
), webhooks AS (
    INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, attempts,
                            next_attempt_at, lease_expires_at, lease_owner, created_at,
                            updated_at)
    SELECT f.delivery_id, f.id, f.tenant_id, f.webhook_url, f.body,
           CASE WHEN f.lease IS NULL THEN 'pending' ELSE 'sending' END, 0,
           CASE WHEN f.lease IS NULL THEN f.now END, f.lease,
           CASE WHEN f.lease IS NOT NULL THEN f.owner END, f.now, f.now
    FROM finished f
    WHERE f.webhook_url IS NOT NULL AND f.body IS NOT NULL
)
SELECT id FROM finished;

-- name: job_retry_running
UPDATE jobs SET status = 'retry', next_run_at = $5, last_error = $6,
                errors = coalesce(errors, '[]'::jsonb) || jsonb_build_array(
                    jsonb_build_object('attempt', attempts, 'at', $4::double precision,
                                       'error', $6::text)),
                lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
WHERE id = $1 AND status = 'running' AND attempts = $2 AND lease_owner = $3;

-- name: job_requeue_running
UPDATE jobs SET status = 'queued', next_run_at = $4, last_error = $5,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
WHERE id = $1 AND status = 'running' AND attempts = $2 AND lease_owner = $3;

-- name: jobs_extend_leases
UPDATE jobs SET lease_expires_at = $3
WHERE id = ANY ($1::text[]) AND status = 'running' AND lease_owner = $2
RETURNING id, cancel_requested;

-- Running jobs nobody holds: their lease ran out (or, $2, every running job: at the
-- start of the only daemon). They go back to `retry`, due now, or to `fatal` when that
-- was their last attempt; the fatal ones are returned for their webhooks.
-- name: jobs_rescue
UPDATE jobs
SET status = CASE WHEN attempts >= max_attempts THEN 'fatal' ELSE 'retry' END,
    last_error = CASE WHEN attempts >= max_attempts
        THEN format('attempt %s was interrupted (%s) and it was the last one', attempts, $3::text)
        ELSE format('attempt %s was interrupted (%s); retrying', attempts, $3::text) END,
    next_run_at = CASE WHEN attempts >= max_attempts THEN NULL ELSE $1 END,
    completed_at = CASE WHEN attempts >= max_attempts THEN $1 END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = $1
WHERE status = 'running' AND ($2 OR lease_expires_at < $1)
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- Operators' listing, newest first, paged by seq (keyset, never OFFSET); a filter left
-- NULL is not applied.
-- name: jobs_list
SELECT * FROM jobs
WHERE seq < $1
  AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::text IS NULL OR status = $4)
  AND ($5::text IS NULL OR type = $5)
ORDER BY seq DESC
LIMIT $2;

-- webhooks: the dispatcher ------------------------------------------------------------

-- Up to $2 due pending deliveries, earliest first, become `sending` until $3, held by
-- $4 (the node's lease owner name); each with its tenant's webhook secret. Rows another claim is taking are stepped over. RETURNING
-- has no order: `due` and `seq` give it back.
-- name: deliveries_claim
WITH due AS (
    SELECT d.seq, d.next_attempt_at FROM deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= $1
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET status = 'sending', next_attempt_at = NULL, lease_expires_at = $3, lease_owner = $4,
    updated_at = $1
FROM due
WHERE d.seq = due.seq
RETURNING d.id, d.job_id, d.tenant_id, d.url, d.body, d.attempts - d.budget_base AS attempts,
          (SELECT t.webhook_secret FROM tenants t WHERE t.id = d.tenant_id) AS secret,
          due.next_attempt_at AS due, d.seq;

-- name: delivery_next_due_time
SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending';

-- `sending` deliveries whose lease ran out (or, $2, every one) go back to `pending`,
-- due now, without counting an attempt.
-- name: deliveries_release
UPDATE deliveries SET status = 'pending', next_attempt_at = $1, lease_expires_at = NULL,
                      lease_owner = NULL, updated_at = $1
WHERE status = 'sending' AND ($2 OR lease_expires_at < $1);

-- Webhook attempts, one row each: the attempt row is always inserted; the delivery
-- moves to its new `status` (succeeded, pending again at `retry_at`, or dead) only while
-- the claim that made the attempt is current (fenced by lease_expires_at).
-- Returns the ids moved. The status is compared with a subquery's 'sending' for the
-- reason given at jobs_finish: the deliveries are found by the rows' ids.
-- name: deliveries_record
WITH v AS (
    SELECT * FROM unnest($1::deliveries_record_row[]) WITH ORDINALITY
), attempts AS (
    INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
    SELECT v.id, v.attempted_at, v.status_code, v.error, v.duration_ms FROM v
    ORDER BY v.ordinality
)
UPDATE deliveries d
SET status = v.status, attempts = d.attempts + 1, lease_expires_at = NULL, lease_owner = NULL,
    next_attempt_at = v.retry_at, last_error = v.error, last_status_code = v.status_code,
    delivered_at = CASE WHEN v.status = 'succeeded' THEN v.now ELSE d.delivered_at END,
    dead_at = CASE WHEN v.status = 'dead' THEN v.now ELSE d.dead_at END,
    updated_at = v.now
FROM v
WHERE d.id = v.id AND d.status = (SELECT 'sending') AND d.lease_expires_at = v.lease
RETURNING d.id;

-- name: delivery_attempts_of
SELECT * FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id;

-- webhooks: the dead-letter queue -----------------------------------------------------

-- name: delivery_get
SELECT * FROM deliveries WHERE id = $1;

-- name: deliveries_dead_list
SELECT * FROM deliveries
WHERE status = 'dead' AND ($1::text IS NULL OR tenant_id = $1)
ORDER BY dead_at DESC, seq DESC
LIMIT $2;

-- name: deliveries_dead_ids
SELECT id FROM deliveries
WHERE status = 'dead' AND ($1::text IS NULL OR tenant_id = $1)
ORDER BY seq;

-- A fresh retry budget: it counts from the attempts made so far (budget_base); `attempts`
-- keeps counting every attempt, as delivery_attempts does. The id (webhook-id) is kept.
-- name: deliveries_redeliver_dead
UPDATE deliveries SET status = 'pending', budget_base = attempts, next_attempt_at = $2,
                      lease_expires_at = NULL, dead_at = NULL, updated_at = $2
WHERE id = ANY ($1::text[]) AND status = 'dead'
RETURNING id;

-- name: deliveries_purge_dead
WITH purged AS (
    DELETE FROM deliveries WHERE id = ANY ($1::text[]) AND status = 'dead' RETURNING id
), attempts AS (
    DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM purged)
)
SELECT id FROM purged;

-- figures ---------------------------------------------------------------------------

-- Jobs by tenant and status: the waiting, running and failed ones from their partial
-- indexes, the totals per tenant by counting the table (migration 0004); `succeeded` is
-- the rest (jobd.store.postgres.figures), all in one REPEATABLE READ snapshot.
-- name: job_counts
SELECT tenant_id, status, count(*)::bigint AS n, min(next_run_at) AS oldest_due
FROM jobs WHERE status IN ('queued', 'retry') GROUP BY tenant_id, status
UNION ALL
SELECT tenant_id, status, count(*), NULL
FROM jobs WHERE status = 'running' GROUP BY tenant_id, status
UNION ALL
SELECT tenant_id, status, count(*), NULL
FROM jobs WHERE status IN ('fatal', 'cancelled') GROUP BY tenant_id, status;

-- name: job_totals_by_tenant
SELECT tenant_id, count(*)::bigint AS n FROM jobs GROUP BY tenant_id;

-- name: jobs_finished_since
SELECT status, count(*)::bigint AS n FROM jobs
WHERE completed_at >= $1 AND status IN ('succeeded', 'fatal', 'cancelled')
GROUP BY status;

-- name: deliveries_dead_count
SELECT count(*) FROM deliveries WHERE status = 'dead';

-- retention -------------------------------------------------------------------------

-- Finished jobs completed before $1, $2 at a time; rows another pruner is deleting are
-- stepped over.
-- name: jobs_prune
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs
    WHERE completed_at < $1 AND status IN ('succeeded', 'fatal', 'cancelled')
    LIMIT $2
    FOR UPDATE SKIP LOCKED);

-- name: jobs_prunable
SELECT count(*) FROM jobs
WHERE completed_at < $1 AND status IN ('succeeded', 'fatal', 'cancelled');

-- Delivered webhooks (dead ones stay in the DLQ until purged), with their attempts.
-- name: deliveries_prune
WITH pruned AS (
    DELETE FROM deliveries WHERE seq IN (
        SELECT seq FROM deliveries
        WHERE status = 'succeeded' AND delivered_at < $1
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING id
), attempts AS (
    DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM pruned)
)
SELECT count(*) FROM pruned;

-- name: deliveries_prunable
SELECT count(*) FROM deliveries WHERE status = 'succeeded' AND delivered_at < $1;
