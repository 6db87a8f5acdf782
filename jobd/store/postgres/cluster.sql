-- The statements of many nodes on one database (jobd.store.postgres.cluster), by name.
-- Node liveness, leadership and the shared rate limit run on the database's clock
-- (migration 0003); job and webhook times, as everywhere else, come from jobd's clock ($n).
--
-- Every statement the leader runs is safe to run twice at once (two leaders for a
-- moment): each takes its rows under a row lock and checks its condition again on the
-- row it locked, so the second one finds nothing left to do.

-- nodes --------------------------------------------------------------------------------

-- Register this node: its row, unless another instance of the same name is alive in it
-- (heartbeat within its timeout), except the instance $8 (one found gone from this host).
-- Returns the row taken (nothing: the name is in use).
-- name: node_join
INSERT INTO nodes AS n (name, instance, host, pid, version, timeout_s, started_at,
                        heartbeat_at, alive_since)
SELECT $1, $2, $3, $4, $5, $6, t.now, t.now, t.now
FROM (SELECT jobd_clock() AS now) t
ON CONFLICT (name) DO UPDATE
SET instance = EXCLUDED.instance, host = EXCLUDED.host, pid = EXCLUDED.pid,
    version = EXCLUDED.version, timeout_s = EXCLUDED.timeout_s,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at,
    alive_since = EXCLUDED.alive_since
WHERE n.instance = EXCLUDED.instance OR n.instance = $7
   OR n.heartbeat_at < EXCLUDED.heartbeat_at - n.timeout_s
RETURNING n.instance;

-- Who holds a node name, and how long ago it was heard from.
-- name: node_holder
SELECT n.instance, n.host, n.pid, jobd_clock() - n.heartbeat_at AS silent_s
FROM nodes n WHERE n.name = $1;

-- See migrations/0003_cluster.sql.
-- name: node_heartbeat
SELECT * FROM jobd_heartbeat($1, $2, $3, $4);

-- The live nodes (heard from within their timeout), with their running jobs and
-- whether each is the leader.
-- name: nodes_live
SELECT n.name, n.instance, n.host, n.pid, n.version, n.started_at, n.heartbeat_at,
       t.now - n.heartbeat_at AS silent_s, n.timeout_s,
       (SELECT count(*) FROM jobs j
        WHERE j.status = 'running' AND j.lease_owner = n.name || '/' || n.instance) AS running,
       coalesce(l.owner = n.name || '/' || n.instance, false) AS leader
FROM nodes n
CROSS JOIN (SELECT jobd_clock() AS now) t
LEFT JOIN leader l ON l.expires_at >= t.now
WHERE n.heartbeat_at >= t.now - n.timeout_s
ORDER BY n.name;

-- The leader removes the nodes silent for longer than their timeout, and returns their
-- lease owner names, if it is still the leader and has itself been alive at least that
-- long (see nodes.alive_since).
-- name: nodes_remove_dead
DELETE FROM nodes d
USING (SELECT jobd_clock() AS now) t, nodes me, leader l
WHERE me.name = $1 AND me.instance = $2
  AND l.owner = me.name || '/' || me.instance AND l.expires_at >= t.now
  AND d.heartbeat_at < t.now - d.timeout_s
  AND me.alive_since <= t.now - d.timeout_s
  AND d.name <> me.name
RETURNING d.name || '/' || d.instance AS owner, d.name, t.now - d.heartbeat_at AS silent_s;

-- A node leaving: its row, and the leadership if it holds it.
-- name: node_leave
WITH gone AS (
    DELETE FROM nodes WHERE name = $1 AND instance = $2
)
DELETE FROM leader WHERE owner = $1 || '/' || $2;

-- name: leader_step_down
DELETE FROM leader WHERE owner = $1;

-- putting work back ---------------------------------------------------------------------

-- Running jobs held by the owners $2 (dead nodes), or by any owner starting with $3
-- except $4 (this node's earlier instances): back to `retry`, due now, or `fatal` if
-- that was their last attempt (the fatal ones are returned for their webhooks), as the
-- lease rescue does (jobs_rescue).
-- name: jobs_rescue_owned
UPDATE jobs
SET status = CASE WHEN attempts >= max_attempts THEN 'fatal' ELSE 'retry' END,
    last_error = CASE WHEN attempts >= max_attempts
        THEN format('attempt %s was interrupted (%s) and it was the last one', attempts, $5::text)
        ELSE format('attempt %s was interrupted (%s); retrying', attempts, $5::text) END,
    next_run_at = CASE WHEN attempts >= max_attempts THEN NULL ELSE $1::double precision END,
    completed_at = CASE WHEN attempts >= max_attempts THEN $1::double precision END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = $1
WHERE status = 'running'
  AND (lease_owner = ANY ($2::text[])
       OR (starts_with(lease_owner, $3::text) AND lease_owner <> $4::text))
RETURNING id, tenant_id, type, payload, status, attempts, webhook_url, result, last_error,
          completed_at;

-- Webhooks being sent by the same owners: back to `pending`, due now, without counting
-- an attempt (the same delivery, the same webhook-id).
-- name: deliveries_release_owned
UPDATE deliveries
SET status = 'pending', next_attempt_at = $1::double precision, lease_expires_at = NULL,
    lease_owner = NULL,
    updated_at = $1
WHERE status = 'sending'
  AND (lease_owner = ANY ($2::text[])
       OR (starts_with(lease_owner, $3::text) AND lease_owner <> $4::text));

-- the shared rate limit -------------------------------------------------------------------

-- Take up to $4 tokens from each tenant's bucket ($1, with its rate $2 and burst $3;
-- each tenant once), at the database's time. Returns per tenant the level after the
-- refill (`level`) and the tokens taken: requests 1..taken of that tenant are admitted.
-- name: buckets_take
INSERT INTO rate_buckets AS b (tenant_id, rate, burst, tokens, taken, updated_at)
SELECT v.tenant_id, v.rate, v.burst, v.burst - least(v.n, v.burst), least(v.n, v.burst), t.now
FROM unnest($1::text[], $2::double precision[], $3::integer[], $4::integer[])
         AS v (tenant_id, rate, burst, n)
CROSS JOIN (SELECT jobd_clock() AS now) t
ON CONFLICT (tenant_id) DO UPDATE
SET tokens = jobd_bucket_level(b.tokens, b.updated_at, b.rate, b.burst, EXCLUDED.updated_at,
                               EXCLUDED.rate, EXCLUDED.burst)
             - least(EXCLUDED.taken, floor(jobd_bucket_level(
                   b.tokens, b.updated_at, b.rate, b.burst, EXCLUDED.updated_at,
                   EXCLUDED.rate, EXCLUDED.burst))::integer),
    taken = least(EXCLUDED.taken, floor(jobd_bucket_level(
                b.tokens, b.updated_at, b.rate, b.burst, EXCLUDED.updated_at,
                EXCLUDED.rate, EXCLUDED.burst))::integer),
    rate = EXCLUDED.rate, burst = EXCLUDED.burst, updated_at = EXCLUDED.updated_at
RETURNING b.tenant_id, b.tokens + b.taken AS level, b.taken;

-- wake-ups ----------------------------------------------------------------------------

-- name: notify
SELECT pg_notify('jobd', $1);
