-- Many jobd nodes on one database: who is alive, who leads, one rate budget per tenant,
-- and wake-ups across nodes (jobd.store.postgres.cluster).
--
-- Unlike the queue tables, these tables live on the DATABASE's clock (jobd_clock():
-- clock_timestamp() as unix seconds): nodes on different hosts judge each other's
-- heartbeats and share a token bucket, and only the database's clock is the same for
-- all of them.

-- The database's time, as unix seconds (the queue tables' unit).
CREATE FUNCTION jobd_clock() RETURNS double precision LANGUAGE sql VOLATILE AS $$
    SELECT extract(epoch FROM clock_timestamp())::double precision
$$;

-- One row per node name: the instance running under it now. A node (re)starting takes
-- its row over only once the instance before it is silent (or gone from its host).
-- A lease on a job or a webhook names its holder as `<name>/<instance>`.
CREATE TABLE nodes (
    name          text COLLATE "C" PRIMARY KEY,    -- cluster.node_name
    instance      text COLLATE "C" NOT NULL,       -- this run of it: <pid>-<random>
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,                   -- jobd's version
    timeout_s     double precision NOT NULL,       -- its cluster.node_timeout: silent this
                                                   -- long, it is dead
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    -- Start of its current run of heartbeats without a gap of half its timeout (reset
    -- after its own outage, or the database's): a leader judges others only once it has
    -- been alive as long as their timeout, so a database that was away for a while does
    -- not make every node look dead at once.
    alive_since   double precision NOT NULL
);

-- The leader: one row, renewed with the leader's heartbeats, taken over by another node
-- once it expires. `since` is kept while the same instance renews it in time.
CREATE TABLE leader (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    owner         text COLLATE "C" NOT NULL,       -- <name>/<instance>
    since         double precision NOT NULL,
    expires_at    double precision NOT NULL
);

-- One token bucket per tenant for the whole cluster (POST /jobs). Rewritten by every
-- batch of requests, and worthless after a crash (a bucket that starts full again only
-- lets a burst through), so it is UNLOGGED: no WAL, no flush to wait for while the row
-- is locked. `taken`: the tokens the last statement took (its RETURNING needs it).
-- Only non-indexed columns change: HOT updates, room for them kept on each page.
CREATE UNLOGGED TABLE rate_buckets (
    tenant_id     text COLLATE "C" PRIMARY KEY,
    rate          double precision NOT NULL,
    burst         integer NOT NULL,
    tokens        double precision NOT NULL,
    taken         integer NOT NULL,
    updated_at    double precision NOT NULL
) WITH (fillfactor = 50);

-- The bucket's level at p_now: refilled at its rate since it was last taken from, up to
-- its burst; a bucket whose rate or burst changed starts full at the new burst.
CREATE FUNCTION jobd_bucket_level(p_tokens double precision, p_at double precision,
                                  p_rate double precision, p_burst integer,
                                  p_now double precision, p_new_rate double precision,
                                  p_new_burst integer)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_rate = p_new_rate AND p_burst = p_new_burst
                THEN least(p_burst::double precision,
                           p_tokens + greatest(0, p_now - p_at) * p_rate)
                ELSE p_new_burst::double precision END
$$;

-- A webhook being sent names its sender, like a running job: a dead node's sends are
-- put back at once rather than when their lease runs out.
ALTER TABLE deliveries ADD COLUMN lease_owner text COLLATE "C";

-- jobd_heartbeat(name, instance, stand for leader, leader ttl): the node's heartbeat and,
-- when it stands, its election or renewal as leader, in one round trip. Returns whether
-- the node still holds its row (false: it was taken for dead and removed, or another
-- instance took its name over), the current leader and since when, and the database's
-- time.
CREATE FUNCTION jobd_heartbeat(p_name text, p_instance text, p_lead boolean,
                               p_ttl double precision)
RETURNS TABLE (registered boolean, leader text, leader_since double precision,
               alive_since double precision, now double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    t      double precision := jobd_clock();
    me     text := p_name || '/' || p_instance;
    alive  double precision;
BEGIN
    UPDATE nodes n
    SET heartbeat_at = t,
        alive_since = CASE WHEN n.heartbeat_at < t - n.timeout_s / 2 THEN t
                           ELSE n.alive_since END
    WHERE n.name = p_name AND n.instance = p_instance
    RETURNING n.alive_since INTO alive;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, l.owner, l.since, NULL::double precision, t
                     FROM (SELECT 1) x LEFT JOIN leader l ON l.expires_at >= t;
        RETURN;
    END IF;
    IF p_lead THEN
        INSERT INTO leader AS l (owner, since, expires_at) VALUES (me, t, t + p_ttl)
        ON CONFLICT (singleton) DO UPDATE
        SET owner = EXCLUDED.owner,
            since = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at >= t THEN l.since
                         ELSE t END,
            expires_at = EXCLUDED.expires_at
        WHERE l.owner = EXCLUDED.owner OR l.expires_at < t;
    END IF;
    RETURN QUERY SELECT true, l.owner, l.since, alive, t
                 FROM (SELECT 1) x LEFT JOIN leader l ON l.expires_at >= t;
END;
$$;

-- Wake-ups the database sends itself, whoever made the change (a node, the CLI, psql):
-- a running job asked to stop, and any change to tenants (API keys and limits cached by
-- the nodes). The nodes send their own (new jobs, queued webhooks) outside their
-- transactions, coalesced (jobd.store.postgres.cluster). Payload: `- <signal>`.
CREATE FUNCTION jobd_notify_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobd', '- cancel:' || NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_cancel_requested
    AFTER UPDATE OF cancel_requested ON jobs
    FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested)
    EXECUTE FUNCTION jobd_notify_cancel();

CREATE FUNCTION jobd_notify_tenants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobd', '- tenants');
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_changed
    AFTER UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION jobd_notify_tenants();
