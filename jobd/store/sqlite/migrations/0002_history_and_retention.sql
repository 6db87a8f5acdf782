-- Attempt history on the job row (like Oban's errors): one entry per failed attempt.
ALTER TABLE jobs ADD COLUMN errors TEXT;

-- Retention scans finished jobs by completion time.
CREATE INDEX jobs_finished ON jobs (completed_at)
    WHERE status IN ('succeeded', 'fatal', 'cancelled');

-- Operators list by tenant, newest first.
CREATE INDEX jobs_tenant_seq ON jobs (tenant_id, seq);

-- Retention of delivered webhooks.
CREATE INDEX deliveries_delivered ON deliveries (delivered_at) WHERE status = 'succeeded';
