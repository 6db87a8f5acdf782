-- jobd's schema on PostgreSQL: the tables and columns of the SQLite schema
-- (jobd/store/migrations, all replayed), laid out for PostgreSQL.
--
-- Choices that hold for every table:
-- * Times are double precision unix seconds (UTC), as on SQLite, not timestamptz. Every
--   time comes from jobd's one injectable clock (jobd/clock.py) as a float bound to the
--   statement; the database's clock is never read, so tests step time without sleeping
--   and both backends share the store's Python side. A float also survives the round
--   trip bit for bit, which fencing by lease (`lease_expires_at = $n` on deliveries)
--   needs: timestamptz keeps microseconds and would round the token.
-- * Identifiers and other machine-made strings are text COLLATE "C": compared and
--   ordered byte by byte like SQLite's BINARY whatever the database's locale (the claim
--   rotation walks tenants in id order; listings sort by id), and cheaper to compare.
-- * JSON a client sent or a handler returned (payload, result) is text, not jsonb:
--   jsonb reorders keys, drops duplicates and respaces, while jobd hands these bytes back
--   as they came (GET /jobs, the replayed 201, the signed webhook). jobd never looks
--   inside them, so jsonb would only add a parse to every insert. The attempt history
--   (jobs.errors), which the database itself builds and appends to, is jsonb.
-- * Exact bytes are bytea: the request body hash, the webhook body that is signed.
-- * Flags are boolean (SQLite's 0/1 integers).
-- * seq is a bigint identity: creation order for keyset paging. Under concurrent inserts
--   a smaller seq may commit after a larger one; nothing orders by commit.
--
-- The queue tables (jobs, deliveries) churn: every job is inserted, updated two or three
-- times (claim, finish; retries) and later deleted by retention, so dead row versions
-- pile up as fast as jobs are drained. Their storage parameters:
-- * fillfactor 85: pages are filled to 85% on insert, so the new version of an updated
--   row usually fits on its own page. Most transitions change an indexed column (status
--   is in every partial index's predicate; lease_expires_at, next_run_at, completed_at
--   are keys), so they cannot be HOT updates, but a same-page version still dirties one
--   heap page instead of two, and page pruning (which reads do on pages with less free
--   space than the fillfactor reserves) reclaims dead versions there without a vacuum.
--   The one update that touches no indexed column (a cancel request on a running job)
--   is HOT.
-- * autovacuum_vacuum_scale_factor 0.02 (default 0.2) and the same for inserts and
--   analyze: vacuum once 2% of the rows are dead, not 20%, so the due-job index stays
--   short and the planner's row counts follow a queue that grows from empty to millions
--   and back. The server's autovacuum_naptime (default 1 min) still bounds how often.
-- * autovacuum_vacuum_cost_delay 0: vacuum these tables at full speed; a throttled
--   vacuum of a hot queue falls behind the churn it is meant to clean up.

CREATE TABLE tenants (
    id               text COLLATE "C" PRIMARY KEY,
    api_key_hash     text COLLATE "C" NOT NULL UNIQUE,
    api_key_prefix   text NOT NULL,
    webhook_secret   text NOT NULL,
    rate             double precision NOT NULL,
    burst            integer NOT NULL,
    max_concurrency  integer,                     -- NULL: no cap
    disabled         boolean NOT NULL DEFAULT false,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL
);

CREATE TABLE jobs (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text COLLATE "C" NOT NULL UNIQUE,     -- job_..., public
    -- Tenants are never deleted. The check takes a KEY SHARE lock on the tenant's row,
    -- which tenant updates (limits, keys, disabling) never conflict with.
    tenant_id        text COLLATE "C" NOT NULL REFERENCES tenants (id),
    type             text COLLATE "C" NOT NULL,
    payload          text NOT NULL,                        -- JSON, exactly as sent
    status           text COLLATE "C" NOT NULL CHECK (status IN
                        ('queued', 'running', 'retry', 'succeeded', 'fatal', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,           -- attempts started
    max_attempts     integer NOT NULL,
    timeout_seconds  double precision,                     -- NULL: jobs.timeout
    run_at           double precision NOT NULL,            -- earliest start asked for
    next_run_at      double precision,                     -- due time while queued/retry
    lease_owner      text COLLATE "C",                     -- node running it
    lease_expires_at double precision,
    cancel_requested boolean NOT NULL DEFAULT false,
    result           text,                                 -- JSON, exactly as returned
    last_error       text,
    webhook_url      text,
    idempotency_key  text COLLATE "C",                     -- NULL once released
    body_hash        bytea,                                -- of the request that set the key
    errors           jsonb,                                -- [{attempt, at, error}, ...]
    created_at       double precision NOT NULL,
    started_at       double precision,
    completed_at     double precision,                     -- set exactly while finished
    updated_at       double precision NOT NULL
) WITH (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Claiming: per tenant, highest priority first, then earliest due; a claim reads the
-- front of one tenant's range (FOR UPDATE SKIP LOCKED steps over other nodes' picks).
CREATE INDEX jobs_due ON jobs (tenant_id, priority DESC, next_run_at)
    WHERE status IN ('queued', 'retry');
-- Lease rescue and running counts: as many rows as jobs are running.
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE status = 'running';
-- Retention and "finished since": completed_at is set exactly when a job is finished.
CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL;
-- Operators list by tenant, newest first; totals per tenant.
CREATE INDEX jobs_tenant_seq ON jobs (tenant_id, seq);
-- `jobs list --status fatal|cancelled`, newest first; touched only by those transitions.
CREATE INDEX jobs_failed_seq ON jobs (status, seq) WHERE status IN ('fatal', 'cancelled');
-- Idempotency: a key names one job of its tenant (INSERT ... ON CONFLICT DO NOTHING).
-- Released keys are NULL, and NULLs are distinct.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key);

-- Webhook outbox: written in the transaction that finishes the job.
CREATE TABLE deliveries (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text COLLATE "C" NOT NULL UNIQUE,     -- msg_..., the webhook-id header
    job_id           text COLLATE "C" NOT NULL,
    tenant_id        text COLLATE "C" NOT NULL,
    url              text NOT NULL,
    body             bytea NOT NULL,                       -- the exact bytes signed and sent
    status           text COLLATE "C" NOT NULL CHECK (status IN
                        ('pending', 'sending', 'succeeded', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,           -- every attempt made to send it
    budget_base      integer NOT NULL DEFAULT 0,           -- attempts before the current retry
                                                           -- budget (renewed by a DLQ retry)
    next_attempt_at  double precision,                     -- due time while pending
    lease_expires_at double precision,                     -- while sending; the fencing token
    last_error       text,
    last_status_code integer,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    delivered_at     double precision,
    dead_at          double precision
) WITH (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_sending ON deliveries (lease_expires_at) WHERE status = 'sending';
CREATE INDEX deliveries_job ON deliveries (job_id);
CREATE INDEX deliveries_dead ON deliveries (tenant_id, seq) WHERE status = 'dead';
CREATE INDEX deliveries_delivered ON deliveries (delivered_at) WHERE status = 'succeeded';

-- One row per webhook attempt; appended, and deleted with its delivery.
CREATE TABLE delivery_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      text COLLATE "C" NOT NULL,
    attempted_at     double precision NOT NULL,
    status_code      integer,
    error            text,
    duration_ms      double precision NOT NULL
);

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
