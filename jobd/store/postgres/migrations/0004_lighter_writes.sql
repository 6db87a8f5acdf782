-- Less work for every job's writes.
--
-- jobs_tenant_seq goes. No transition of a job is a HOT update (status is in the partial
-- indexes' predicates), so its insert, its claim and its finish each add an entry to
-- every index of jobs: one index fewer is one entry fewer on each, and index entries
-- are most of what a claim or a finish costs the server. This one served only the
-- operators: `jobs list --tenant` and the totals per tenant (`jobd stats`, /metrics).
-- * A tenant's listing walks jobs_pkey newest first, stepping over other tenants' jobs,
--   or (for a tenant with few jobs) reads them from jobs_idempotency, which also leads
--   with tenant_id, and sorts them.
-- * The totals per tenant count the table (in parallel where the server may): a full
--   count either way, as this index held an entry for every row version too.

DROP INDEX jobs_tenant_seq;

-- The rows of the three batches (jobs_insert, jobs_finish, deliveries_record in
-- queries.sql), each batch one array of its row type: one parameter whatever the count.
-- With one array per column instead, asyncpg checked every element of every array
-- against collections.abc, in Python on the event loop; an array of rows is checked once
-- a row, and the server unpacks it with less work too.

CREATE TYPE jobs_insert_row AS (
    id               text,
    tenant_id        text,
    type             text,
    payload          text,
    priority         integer,
    max_attempts     integer,
    timeout_seconds  double precision,
    run_at           double precision,
    webhook_url      text,
    idempotency_key  text,
    body_hash        bytea,
    now              double precision,
    api_key_hash     text,                -- NULL: not checked
    owner            text,                -- a lease owner: the job is created running
    expires          double precision     -- until then
);

CREATE TYPE jobs_finish_row AS (
    id               text,
    status           text,
    result           text,
    error            text,
    now              double precision,
    attempt          integer,
    owner            text,
    delivery_id      text,                -- its webhook, when it has one
    body             bytea,
    lease            double precision     -- the webhook is created sending under it
);

CREATE TYPE deliveries_record_row AS (
    id               text,
    attempted_at     double precision,
    status_code      integer,
    error            text,
    duration_ms      double precision,
    now              double precision,
    lease            double precision,    -- the claim that made the attempt (fencing)
    status           text,                -- succeeded, pending or dead
    retry_at         double precision     -- when pending again
);
