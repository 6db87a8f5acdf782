-- Retention's index of finished jobs, keyed on what marks a finished job.
--
-- jobs_finished was partial on `status IN ('succeeded', 'fatal', 'cancelled')`.
-- Every transition changes status, so SQLite had to check (and seek) that index on
-- every claim (queued -> running) as well as on every finish: work for the writer at
-- every step of every job, for an index that only a finish changes. completed_at is set exactly when a job reaches a final status and cleared
-- when it leaves one (`jobs retry`), so this index holds the same rows, and a claim
-- (which does not set completed_at) no longer touches it. Queries that compare
-- completed_at (`completed_at < ?`) imply `completed_at IS NOT NULL` and can use it.
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL;
