-- Every SQL statement jobd runs after migrations, by name.
-- Time is always bound as :now; SQLite's own clock is never used.

-- name: tenant_insert
INSERT INTO tenants (id, api_key_hash, api_key_prefix, webhook_secret, rate, burst,
                     max_concurrency, disabled, created_at, updated_at)
VALUES (:id, :api_key_hash, :api_key_prefix, :webhook_secret, :rate, :burst,
        :max_concurrency, 0, :now, :now);

-- name: tenant_get
SELECT * FROM tenants WHERE id = ?;

-- name: tenant_list
SELECT * FROM tenants ORDER BY id;

-- name: tenant_by_key_hash
SELECT * FROM tenants WHERE api_key_hash = ?;

-- name: tenant_update_limits
UPDATE tenants SET rate = :rate, burst = :burst, max_concurrency = :max_concurrency,
                   updated_at = :now
WHERE id = :id;

-- name: tenant_set_disabled
UPDATE tenants SET disabled = :disabled, updated_at = :now WHERE id = :id;

-- name: tenant_set_key
UPDATE tenants SET api_key_hash = :api_key_hash, api_key_prefix = :api_key_prefix,
                   updated_at = :now
WHERE id = :id;

-- name: tenant_key_is_live
SELECT 1 FROM tenants WHERE id = ? AND api_key_hash = ? AND disabled = 0;

-- A new job; nothing is inserted when a job of this tenant already holds the key
-- (then the caller replays it, says 409, or takes over an expired key).
-- name: job_insert
INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, max_attempts,
                  timeout_seconds, run_at, next_run_at, webhook_url, idempotency_key,
                  body_hash, created_at, updated_at)
VALUES (?, ?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING;

-- New jobs in one statement (run_rows repeats the VALUES row): like job_insert, and a
-- row whose API key hash (column15; NULL: not checked) is no longer its tenant's live
-- key is not inserted either. A row with a lease owner (column16) is created already
-- running: its first attempt starts now, held until column17 (jobd.models.StartLease).
-- name: jobs_insert_if_key_live
INSERT INTO jobs (id, tenant_id, type, payload, status, priority, attempts, max_attempts,
                  timeout_seconds, run_at, next_run_at, webhook_url, idempotency_key,
                  body_hash, created_at, updated_at, lease_owner, lease_expires_at, started_at)
SELECT column1, column2, column3, column4, iif(column16 IS NULL, 'queued', 'running'),
       column5, column16 IS NOT NULL, column6, column7, column8,
       iif(column16 IS NULL, column9, NULL), column10, column11, column12, column13,
       column14, column16, column17, iif(column16 IS NULL, NULL, column13)
FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)) AS v
WHERE v.column15 IS NULL
   OR EXISTS (SELECT 1 FROM tenants t
              WHERE t.id = v.column2 AND t.api_key_hash = v.column15 AND t.disabled = 0)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING;

-- name: jobs_present
SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?));

-- name: job_holding_key
SELECT id, body_hash, created_at FROM jobs WHERE tenant_id = ? AND idempotency_key = ?;

-- name: job_release_key
UPDATE jobs SET idempotency_key = NULL WHERE id = ?;

-- name: job_get
SELECT * FROM jobs WHERE id = ?;

-- name: job_get_for_tenant
SELECT * FROM jobs WHERE id = ? AND tenant_id = ?;

-- A claim round's plan, as one row (one statement for the writer):
-- 1. the tenants with waiting jobs, in id order (one seek of jobs_due each: a loose
--    index scan), as a JSON array;
-- 2. [id, max_concurrency, running] of each tenant with a cap, as a JSON array
--    (running jobs counted through jobs_running: a capped tenant's history can be long);
-- 3. the first tenant of the rotation (the first after :after, else the first);
-- 4. how many jobs that tenant may take (:limit, or less under its cap);
-- 5. those of its due jobs, packed like due_jobs_of_tenant_packed.
-- A round with one tenant waiting (the common case) needs nothing more before marking
-- its jobs running. jobd.store.scheduling.claim_due_jobs checks 3 and 4 against its
-- own rotation and allowance before using 5.
-- name: claim_plan
WITH RECURSIVE waiting (tenant_id) AS (
    SELECT min(tenant_id) FROM jobs WHERE status IN ('queued', 'retry')
    UNION ALL
    SELECT (SELECT min(tenant_id) FROM jobs
            WHERE status IN ('queued', 'retry') AND tenant_id > waiting.tenant_id)
    FROM waiting WHERE waiting.tenant_id IS NOT NULL
),
running (tenant_id, n) AS (
    SELECT tenant_id, count(*) FROM jobs INDEXED BY jobs_running
    WHERE status = 'running' GROUP BY tenant_id
),
first (tenant_id) AS (
    SELECT coalesce((SELECT min(tenant_id) FROM waiting WHERE tenant_id > :after),
                    (SELECT min(tenant_id) FROM waiting))
),
room (n) AS (
    SELECT min(:limit, coalesce((
        SELECT max(0, t.max_concurrency - coalesce((SELECT n FROM running r
                                                    WHERE r.tenant_id = t.id), 0))
        FROM tenants t
        WHERE t.id = (SELECT tenant_id FROM first) AND t.max_concurrency IS NOT NULL), :limit))
)
SELECT (SELECT json_group_array(tenant_id) FROM waiting WHERE tenant_id IS NOT NULL),
       (SELECT json_group_array(json_array(t.id, t.max_concurrency,
                   coalesce((SELECT n FROM running r WHERE r.tenant_id = t.id), 0)))
        FROM tenants t WHERE t.max_concurrency IS NOT NULL),
       (SELECT tenant_id FROM first),
       (SELECT n FROM room),
       (SELECT json_group_array(json_array(seq, id, tenant_id, type, payload, attempts,
                                           max_attempts, timeout_seconds, next_run_at,
                                           webhook_url))
        FROM (SELECT seq, id, tenant_id, type, payload, attempts, max_attempts, timeout_seconds,
                     next_run_at, webhook_url
              FROM jobs
              WHERE tenant_id = (SELECT tenant_id FROM first) AND status IN ('queued', 'retry')
                AND next_run_at <= :now
              ORDER BY priority DESC, next_run_at
              LIMIT (SELECT n FROM room)));

-- A tenant's due jobs, best first, packed into one JSON array: one row, so the writer
-- steps it once (see jobd.store.queries.run_rows); the rows keep the inner order.
-- name: due_jobs_of_tenant_packed
SELECT json_group_array(json_array(seq, id, tenant_id, type, payload, attempts, max_attempts,
                                   timeout_seconds, next_run_at, webhook_url))
FROM (SELECT seq, id, tenant_id, type, payload, attempts, max_attempts, timeout_seconds,
             next_run_at, webhook_url
      FROM jobs
      WHERE tenant_id = ? AND status IN ('queued', 'retry') AND next_run_at <= ?
      ORDER BY priority DESC, next_run_at
      LIMIT ?);

-- name: jobs_mark_running
UPDATE jobs SET status = 'running', attempts = attempts + 1, next_run_at = NULL,
                lease_owner = :owner, lease_expires_at = :expires, started_at = :now,
                updated_at = :now
WHERE seq IN (SELECT value FROM json_each(:seqs));

-- Fenced: only the current attempt of a running job held by this owner.
-- name: job_finish_running
UPDATE jobs SET status = :status, result = :result, last_error = :error,
                errors = CASE WHEN :error IS NULL THEN errors ELSE json_insert(
                    coalesce(errors, '[]'), '$[#]',
                    json_object('attempt', attempts, 'at', :now, 'error', :error)) END,
                completed_at = :now, next_run_at = NULL, lease_owner = NULL,
                lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- The same for many jobs at once: one VALUES row (id, status, result, error, now, attempt)
-- per job, repeated by jobd.store.queries.run_rows; the last parameter is the owner.
-- name: jobs_finish_running_many
UPDATE jobs SET status = v.column2, result = v.column3, last_error = v.column4,
                errors = CASE WHEN v.column4 IS NULL THEN jobs.errors ELSE json_insert(
                    coalesce(jobs.errors, '[]'), '$[#]',
                    json_object('attempt', jobs.attempts, 'at', v.column5, 'error', v.column4))
                    END,
                completed_at = v.column5, next_run_at = NULL, lease_owner = NULL,
                lease_expires_at = NULL, updated_at = v.column5
FROM (VALUES (?, ?, ?, ?, ?, ?)) AS v
WHERE jobs.id = v.column1 AND jobs.status = 'running' AND jobs.attempts = v.column6
  AND jobs.lease_owner = ?;

-- What finishing wrote, read only when jobs_finish_running_many left some of its rows
-- (a claim that was no longer current): jobd.store.sqlite.scheduling tells the finished
-- ones from the others by it.
-- name: jobs_outcomes
SELECT id, status, attempts, completed_at, result, last_error, lease_owner FROM jobs
WHERE id IN (SELECT value FROM json_each(?));

-- The webhooks of jobs about to be finished by jobs_finish_running_many, fenced the same
-- way (run first, in the same transaction, so a fenced-out job gets none): one VALUES row
-- (id, job_id, tenant_id, url, body, now, attempt, lease_expires_at) per job; the last
-- parameter is the owner. With a lease the delivery is created already `sending`: the
-- dispatcher holds a slot for it and sends it once this commits (a direct dispatch).
-- name: deliveries_insert_if_held
INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, attempts,
                        next_attempt_at, lease_expires_at, created_at, updated_at)
SELECT v.column1, v.column2, v.column3, v.column4, v.column5,
       iif(v.column8 IS NULL, 'pending', 'sending'), 0,
       iif(v.column8 IS NULL, v.column6, NULL), v.column8, v.column6, v.column6
FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?)) AS v
JOIN jobs ON jobs.id = v.column2 AND jobs.status = 'running' AND jobs.attempts = v.column7
         AND jobs.lease_owner = ?;

-- name: job_retry_running
UPDATE jobs SET status = 'retry', next_run_at = :next_run_at, last_error = :error,
                errors = json_insert(coalesce(errors, '[]'), '$[#]',
                    json_object('attempt', attempts, 'at', :now, 'error', :error)),
                lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner;

-- name: job_requeue_running
UPDATE jobs SET status = 'queued', next_run_at = :now, last_error = :error,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner;

-- name: job_extend_leases
UPDATE jobs SET lease_expires_at = :expires
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running'
  AND lease_owner = :owner
RETURNING id, cancel_requested;

-- Orphans: running jobs whose lease ran out ...
-- name: jobs_lease_expired
SELECT id, attempts, max_attempts FROM jobs
WHERE status = 'running' AND lease_expires_at < :now;

-- ... or, at startup, every running job (no other process can hold one).
-- name: jobs_running_all
SELECT id, attempts, max_attempts FROM jobs WHERE status = 'running';

-- name: job_orphan_to_retry
UPDATE jobs SET status = 'retry', next_run_at = :now, last_error = :error,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'running';

-- name: job_orphan_to_fatal
UPDATE jobs SET status = 'fatal', last_error = :error, completed_at = :now,
                next_run_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                updated_at = :now
WHERE id = :id AND status = 'running'
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- name: job_cancel_waiting
UPDATE jobs SET status = 'cancelled', completed_at = :now, next_run_at = NULL,
                updated_at = :now
WHERE id = :id AND status IN ('queued', 'retry')
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- name: job_request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = :now
WHERE id = :id AND status = 'running';

-- name: job_retry_final
UPDATE jobs SET status = 'queued', next_run_at = :now, cancel_requested = 0,
                max_attempts = max(max_attempts, attempts + 1), result = NULL,
                completed_at = NULL, updated_at = :now
WHERE id = :id AND status IN ('fatal', 'cancelled');

-- name: delivery_insert
INSERT INTO deliveries (id, job_id, tenant_id, url, body, status, attempts,
                        next_attempt_at, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?);

-- Operators' listings, newest first, paged by seq (keyset, never OFFSET). One
-- variant per access path, named with INDEXED BY (left alone, SQLite walks seq
-- downwards through the whole history looking for a rare status);
-- jobd.store.jobs.list_jobs chooses. Optional filters are `(:x IS NULL OR ...)`.

-- No status, or `succeeded` (most rows): walk seq downwards and filter.
-- name: job_list
SELECT * FROM jobs
WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:status IS NULL OR status = :status)
  AND (:type IS NULL OR type = :type)
  AND seq < :before
ORDER BY seq DESC
LIMIT :limit;

-- One tenant, no status or `succeeded`: jobs_tenant_seq.
-- name: job_list_of_tenant
SELECT * FROM jobs INDEXED BY jobs_tenant_seq
WHERE tenant_id = :tenant_id
  AND (:status IS NULL OR status = :status)
  AND (:type IS NULL OR type = :type)
  AND seq < :before
ORDER BY seq DESC
LIMIT :limit;

-- `queued` or `retry`: every waiting job (jobs_due), sorted by seq. Costs as much as
-- the backlog is long, never as much as the history; list_jobs walks seq instead
-- (job_list) when more than :cap jobs are queued, as they then fill the newest rows.
-- name: waiting_jobs_capped
SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_due
                      WHERE status IN ('queued', 'retry') LIMIT :cap + 1);

-- name: job_list_waiting
SELECT * FROM jobs INDEXED BY jobs_due
WHERE status IN ('queued', 'retry') AND status = :status
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:type IS NULL OR type = :type)
  AND seq < :before
ORDER BY seq DESC
LIMIT :limit;

-- `running`: jobs_running, as many as are running.
-- name: job_list_running
SELECT * FROM jobs INDEXED BY jobs_running
WHERE status = 'running'
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:type IS NULL OR type = :type)
  AND seq < :before
ORDER BY seq DESC
LIMIT :limit;

-- `fatal` or `cancelled`: jobs_failed_seq, already in seq order.
-- name: job_list_failed
SELECT * FROM jobs INDEXED BY jobs_failed_seq
WHERE status IN ('fatal', 'cancelled') AND status = :status
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:type IS NULL OR type = :type)
  AND seq < :before
ORDER BY seq DESC
LIMIT :limit;

-- name: deliveries_of_job
SELECT * FROM deliveries WHERE job_id = ? ORDER BY seq;

-- name: delivery_attempts_of
SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id;

-- webhooks: dispatcher ------------------------------------------------------------

-- Packed into one JSON row (one step for the writer); the body is JSON text, so it
-- travels as a string.
-- name: deliveries_due_packed
SELECT json_group_array(json_array(seq, id, job_id, tenant_id, url, body, attempts,
                                   webhook_secret))
FROM (SELECT d.seq, d.id, d.job_id, d.tenant_id, d.url, CAST(d.body AS TEXT) AS body,
             d.attempts - d.budget_base AS attempts, t.webhook_secret
      FROM deliveries d LEFT JOIN tenants t ON t.id = d.tenant_id
      WHERE d.status = 'pending' AND d.next_attempt_at <= :now
      ORDER BY d.next_attempt_at
      LIMIT :limit);

-- name: deliveries_mark_sending
UPDATE deliveries SET status = 'sending', next_attempt_at = NULL,
                      lease_expires_at = :lease_expires_at, updated_at = :now
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND status = 'pending';

-- name: tenant_webhook_secret
SELECT webhook_secret FROM tenants WHERE id = ?;

-- name: delivery_next_due_time
SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending';

-- Every delivery left sending (at startup: no other process can be sending it) ...
-- name: deliveries_release_all_sending
UPDATE deliveries SET status = 'pending', next_attempt_at = :now, lease_expires_at = NULL,
                      updated_at = :now
WHERE status = 'sending';

-- ... or those whose lease ran out.
-- name: deliveries_release_expired
UPDATE deliveries SET status = 'pending', next_attempt_at = :now, lease_expires_at = NULL,
                      updated_at = :now
WHERE status = 'sending' AND lease_expires_at < :now;

-- name: delivery_attempt_insert
INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
VALUES (?, ?, ?, ?, ?);

-- Fenced: only the claim that is still current (same lease) may record an outcome.
-- name: delivery_succeeded
UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, lease_expires_at = NULL,
                      next_attempt_at = NULL, last_error = NULL,
                      last_status_code = :status_code, delivered_at = :now, updated_at = :now
WHERE id = :id AND status = 'sending' AND lease_expires_at = :lease_expires_at;

-- Many deliveries at once: one VALUES row (id, status_code, now, lease_expires_at) each.
-- name: deliveries_succeeded_many
UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, lease_expires_at = NULL,
                      next_attempt_at = NULL, last_error = NULL,
                      last_status_code = v.column2, delivered_at = v.column3,
                      updated_at = v.column3
FROM (VALUES (?, ?, ?, ?)) AS v
WHERE deliveries.id = v.column1 AND deliveries.status = 'sending'
  AND deliveries.lease_expires_at = v.column4;

-- name: delivery_retry_later
UPDATE deliveries SET status = 'pending', attempts = attempts + 1, lease_expires_at = NULL,
                      next_attempt_at = :next_attempt_at, last_error = :error,
                      last_status_code = :status_code, updated_at = :now
WHERE id = :id AND status = 'sending' AND lease_expires_at = :lease_expires_at;

-- name: delivery_dead_letter
UPDATE deliveries SET status = 'dead', attempts = attempts + 1, lease_expires_at = NULL,
                      next_attempt_at = NULL, last_error = :error,
                      last_status_code = :status_code, dead_at = :now, updated_at = :now
WHERE id = :id AND status = 'sending' AND lease_expires_at = :lease_expires_at;

-- webhooks: dead-letter queue -----------------------------------------------------

-- name: delivery_get
SELECT * FROM deliveries WHERE id = ?;

-- name: deliveries_dead_list
SELECT * FROM deliveries
WHERE status = 'dead' AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
ORDER BY dead_at DESC, seq DESC
LIMIT :limit;

-- name: deliveries_dead_ids
SELECT id FROM deliveries
WHERE status = 'dead' AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
ORDER BY seq;

-- name: deliveries_dead_count
SELECT count(*) FROM deliveries WHERE status = 'dead';

-- A fresh retry budget: it counts from the attempts made so far (budget_base); `attempts`
-- keeps counting every attempt, and the id (webhook-id) is kept.
-- name: delivery_redeliver_dead
UPDATE deliveries SET status = 'pending', budget_base = attempts, next_attempt_at = :now,
                      lease_expires_at = NULL, dead_at = NULL, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'dead'
RETURNING id;

-- name: delivery_attempts_purge_dead
DELETE FROM delivery_attempts
WHERE delivery_id IN (SELECT id FROM deliveries
                      WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'dead');

-- name: delivery_purge_dead
DELETE FROM deliveries
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'dead'
RETURNING id;

-- Jobs by tenant and status without reading the table (a million rows of payloads
-- take seconds; `jobd top` and /metrics ask every few seconds): totals per tenant
-- from jobs_tenant_seq, the waiting, running and failed jobs from their partial
-- indexes; jobd.store.stats counts `succeeded` as the rest, in one read snapshot.
-- name: job_totals_by_tenant
SELECT tenant_id, count(*) AS n FROM jobs INDEXED BY jobs_tenant_seq GROUP BY tenant_id;

-- name: job_counts_waiting
SELECT tenant_id, status, count(*) AS n, min(next_run_at) AS oldest_due
FROM jobs INDEXED BY jobs_due
WHERE status IN ('queued', 'retry')
GROUP BY tenant_id, status;

-- name: job_counts_running
SELECT tenant_id, status, count(*) AS n, NULL AS oldest_due
FROM jobs INDEXED BY jobs_running
WHERE status = 'running'
GROUP BY tenant_id;

-- name: job_counts_failed
SELECT tenant_id, status, count(*) AS n, NULL AS oldest_due
FROM jobs INDEXED BY jobs_failed_seq
WHERE status IN ('fatal', 'cancelled')
GROUP BY tenant_id, status;

-- name: jobs_finished_since
SELECT status, count(*) AS n FROM jobs
WHERE status IN ('succeeded', 'fatal', 'cancelled') AND completed_at >= ?
GROUP BY status;

-- Retention: finished jobs older than the cutoff, a small batch at a time.
-- name: prune_jobs_batch
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs
    WHERE status IN ('succeeded', 'fatal', 'cancelled') AND completed_at < :cutoff
    LIMIT :batch);

-- name: count_prunable_jobs
SELECT count(*) FROM jobs
WHERE status IN ('succeeded', 'fatal', 'cancelled') AND completed_at < :cutoff;

-- Deliveries of pruned jobs that are done with (dead ones stay in the DLQ until purged).
-- name: prune_delivered_batch
DELETE FROM deliveries WHERE seq IN (
    SELECT d.seq FROM deliveries d
    WHERE d.status = 'succeeded' AND d.delivered_at < :cutoff
    LIMIT :batch)
RETURNING id;

-- name: count_prunable_deliveries
SELECT count(*) FROM deliveries WHERE status = 'succeeded' AND delivered_at < :cutoff;

-- name: delete_delivery_attempts
DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT value FROM json_each(?));
