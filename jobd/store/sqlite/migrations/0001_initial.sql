-- jobd initial schema. Times are unix seconds (REAL, UTC).

CREATE TABLE tenants (
    id               TEXT PRIMARY KEY,
    api_key_hash     TEXT NOT NULL UNIQUE,
    api_key_prefix   TEXT NOT NULL,
    webhook_secret   TEXT NOT NULL,
    rate             REAL NOT NULL,
    burst            INTEGER NOT NULL,
    max_concurrency  INTEGER,                 -- NULL: no cap
    disabled         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,     -- creation order, for keyset paging
    id               TEXT NOT NULL UNIQUE,    -- job_..., public
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    type             TEXT NOT NULL,
    payload          TEXT NOT NULL,           -- JSON
    status           TEXT NOT NULL CHECK (status IN
                        ('queued', 'running', 'retry', 'succeeded', 'fatal', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempts started
    max_attempts     INTEGER NOT NULL,
    timeout_seconds  REAL,                    -- NULL: jobs.timeout
    run_at           REAL NOT NULL,           -- earliest start the client asked for
    next_run_at      REAL,                    -- due time while queued/retry, else NULL
    lease_owner      TEXT,                    -- daemon instance running it
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result           TEXT,                    -- JSON
    last_error       TEXT,
    webhook_url      TEXT,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    started_at       REAL,
    completed_at     REAL,
    updated_at       REAL NOT NULL
);

-- Claiming: per tenant, highest priority first, then earliest due.
CREATE INDEX jobs_due ON jobs (tenant_id, priority DESC, next_run_at)
    WHERE status IN ('queued', 'retry');
-- Lease rescue and running counts.
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE status = 'running';

CREATE TABLE idempotency_keys (
    tenant_id        TEXT NOT NULL,
    key              TEXT NOT NULL,
    body_hash        BLOB NOT NULL,
    job_id           TEXT NOT NULL,
    response_status  INTEGER NOT NULL,
    response_body    BLOB NOT NULL,
    expires_at       REAL NOT NULL,
    PRIMARY KEY (tenant_id, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Webhook outbox: written in the transaction that finishes the job.
CREATE TABLE deliveries (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,    -- msg_..., the webhook-id header
    job_id           TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             BLOB NOT NULL,           -- the exact bytes that are signed and sent
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'succeeded', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempts in the current retry budget
    next_attempt_at  REAL,                    -- due time while pending
    lease_expires_at REAL,                    -- while sending
    last_error       TEXT,
    last_status_code INTEGER,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_at     REAL,
    dead_at          REAL
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_sending ON deliveries (lease_expires_at) WHERE status = 'sending';
CREATE INDEX deliveries_job ON deliveries (job_id);
CREATE INDEX deliveries_dead ON deliveries (tenant_id, seq) WHERE status = 'dead';

CREATE TABLE delivery_attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL,
    attempted_at     REAL NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    duration_ms      REAL NOT NULL
);

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
