-- An Idempotency-Key now lives on the job it created: creating a job is one INSERT
-- into one table instead of two, and the idempotency index is the job's own.
-- A key is live while created_at + idempotency.ttl_hours is in the future; a client
-- that reuses an expired key takes it over (the old job's key is set to NULL).

ALTER TABLE jobs ADD COLUMN body_hash BLOB;

-- Keys whose idempotency row is already gone (expired and pruned) are released.
UPDATE jobs SET idempotency_key = NULL
WHERE idempotency_key IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM idempotency_keys k
    WHERE k.tenant_id = jobs.tenant_id AND k.key = jobs.idempotency_key AND k.job_id = jobs.id);

UPDATE jobs SET body_hash = (
    SELECT k.body_hash FROM idempotency_keys k
    WHERE k.tenant_id = jobs.tenant_id AND k.key = jobs.idempotency_key)
WHERE idempotency_key IS NOT NULL;

CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key);

DROP TABLE idempotency_keys;
