-- Scale-out (DESIGN §4): every instance of a consuming stage (processor,
-- router, batchrouter) holds time-limited leases on a share of the
-- partitions. The lease functions below are the only writers of these
-- tables; every transaction that consumes work calls lease_fence first.

-- Live instances and their heartbeats. An instance whose expires_at passed
-- is dead: it no longer counts in the fair share and its row is removed by
-- the next tick of any instance of the stage.
CREATE TABLE instances (
    stage         text        NOT NULL,
    instance_id   text        NOT NULL,
    host          text        NOT NULL DEFAULT '',
    pid           int         NOT NULL DEFAULT 0,
    admin_address text        NOT NULL DEFAULT '',
    hint_endpoint text        NOT NULL DEFAULT '', -- where it receives hints ('' none)
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    acquired      bigint      NOT NULL DEFAULT 0, -- partitions taken, since start
    released      bigint      NOT NULL DEFAULT 0, -- partitions given back, since start
    stopping      boolean     NOT NULL DEFAULT false, -- draining: takes nothing, not in the share
    PRIMARY KEY (stage, instance_id)
);

-- (stage, partition) -> owner. epoch grows by one each time the partition
-- changes hands (or is taken again after a release); it is the fencing
-- token. owner NULL: free. A lease whose expires_at passed may be taken by
-- any instance; until then only its owner uses it.
CREATE TABLE leases (
    stage       text        NOT NULL,
    partition   int         NOT NULL,
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz,
    PRIMARY KEY (stage, partition)
);
-- epoch is a key column (this unique index), so a takeover, which changes
-- it, conflicts with the FOR KEY SHARE lock of lease_fence, while a renewal
-- (expires_at only) does not: an owner's consuming transactions never hold
-- up its own heartbeat.
CREATE UNIQUE INDEX leases_epoch ON leases (stage, partition, epoch);
INSERT INTO leases (stage, partition)
SELECT s, p
FROM (VALUES ('processor'), ('router'), ('batchrouter')) AS v(s),
     generate_series(0, {{partitions}} - 1) AS p;

-- One heartbeat of instance p_owner of p_stage, in one transaction:
--  1. registers or refreshes the instance (p_info: host, pid, admin_address,
--     hint_endpoint), forgets dead instances of the stage;
--  2. frees the partitions in p_release that it still owns (the caller
--     stopped working on them);
--  3. renews every lease it owns (an expired one it still owns too: nobody
--     took it, so its epoch stays);
--  4. computes its fair share: P / live instances that are not draining,
--     one more for the first P mod n of them by instance_id; a draining
--     instance (p_info.stopping) has a share of 0: it takes nothing and
--     gives back what it can;
--  5. above its share: names the partitions to give back (the highest
--     numbered, at most p_max_moves per tick) without freeing them; below
--     it: takes free or expired leases up to its share (epoch + 1), at
--     once, so a start or a takeover after a crash takes one tick.
-- Returns the partitions it owns after the tick: epoch, and give = true
-- for those it should hand back at a later tick.
CREATE FUNCTION lease_tick(p_stage text, p_owner text, p_ttl_ms int, p_max_moves int,
                           p_release int[], p_info jsonb)
RETURNS TABLE (partition int, epoch bigint, give boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ttl interval := make_interval(secs => p_ttl_ms / 1000.0);
    nparts int := (SELECT value::int FROM meta WHERE key = 'partitions');
    nlive int;
    rank int;
    target int;
    held int;
    n_released int := 0;
    n_taken int := 0;
BEGIN
    -- a tick never waits long behind another: it fails and runs again
    PERFORM set_config('lock_timeout', (p_ttl_ms / 4)::text, true);
    INSERT INTO instances AS i (stage, instance_id, host, pid, admin_address, hint_endpoint,
                                stopping, expires_at)
    VALUES (p_stage, p_owner, coalesce(p_info->>'host', ''), coalesce((p_info->>'pid')::int, 0),
            coalesce(p_info->>'admin_address', ''), coalesce(p_info->>'hint_endpoint', ''),
            coalesce((p_info->>'stopping')::boolean, false), clock_timestamp() + ttl)
    ON CONFLICT (stage, instance_id) DO UPDATE
        SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + ttl,
            admin_address = excluded.admin_address, hint_endpoint = excluded.hint_endpoint,
            stopping = excluded.stopping;
    -- dead instances; one another tick is busy with is left to it (no deadlock)
    DELETE FROM instances d
    WHERE d.ctid IN (SELECT x.ctid FROM instances x
                     WHERE x.stage = p_stage AND x.expires_at < clock_timestamp()
                     FOR UPDATE SKIP LOCKED);

    IF cardinality(p_release) > 0 THEN
        UPDATE leases l SET owner = NULL, expires_at = '-infinity'
        WHERE l.stage = p_stage AND l.owner = p_owner AND l.partition = ANY (p_release);
        GET DIAGNOSTICS n_released = ROW_COUNT;
    END IF;

    UPDATE leases l SET expires_at = clock_timestamp() + ttl
    WHERE l.stage = p_stage AND l.owner = p_owner;
    GET DIAGNOSTICS held = ROW_COUNT;

    -- the share counts live instances that are not draining
    SELECT count(*), count(*) FILTER (WHERE i.instance_id < p_owner)
    INTO nlive, rank
    FROM instances i
    WHERE i.stage = p_stage AND i.expires_at >= clock_timestamp() AND NOT i.stopping;
    IF coalesce((p_info->>'stopping')::boolean, false) OR nlive = 0 THEN
        target := 0;
    ELSE
        target := nparts / nlive + CASE WHEN rank < nparts % nlive THEN 1 ELSE 0 END;
    END IF;

    IF held < target THEN
        WITH free AS (
            SELECT l.partition FROM leases l
            WHERE l.stage = p_stage AND (l.owner IS NULL OR l.expires_at < clock_timestamp())
            ORDER BY l.partition
            LIMIT target - held
            FOR UPDATE SKIP LOCKED)
        UPDATE leases l
        SET owner = p_owner, epoch = l.epoch + 1, expires_at = clock_timestamp() + ttl,
            acquired_at = clock_timestamp()
        FROM free
        WHERE l.stage = p_stage AND l.partition = free.partition
          AND (l.owner IS NULL OR l.expires_at < clock_timestamp());
        GET DIAGNOSTICS n_taken = ROW_COUNT;
    END IF;

    IF n_released > 0 OR n_taken > 0 THEN
        UPDATE instances i SET released = i.released + n_released, acquired = i.acquired + n_taken
        WHERE i.stage = p_stage AND i.instance_id = p_owner;
    END IF;

    RETURN QUERY
    SELECT l.partition, l.epoch,
           row_number() OVER (ORDER BY l.partition DESC) <= least(greatest(held - target, 0), p_max_moves)
    FROM leases l WHERE l.stage = p_stage AND l.owner = p_owner
    ORDER BY l.partition;
END
$$;

-- Graceful stop: frees every lease of the instance and removes it, so the
-- others take its partitions at their next tick instead of after expiry.
CREATE FUNCTION lease_leave(p_stage text, p_owner text) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n int;
BEGIN
    UPDATE leases l SET owner = NULL, expires_at = '-infinity'
    WHERE l.stage = p_stage AND l.owner = p_owner;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM instances i WHERE i.stage = p_stage AND i.instance_id = p_owner;
    RETURN n;
END
$$;

-- The fence of a consuming transaction: raises SQLSTATE PL409 unless
-- p_owner still holds each partition p_parts[i] with epoch p_epochs[i].
-- The lease rows stay key-share-locked until the transaction ends, so no
-- takeover (which changes epoch) can commit in between: either this
-- transaction commits first and the next owner reads what it wrote, or the
-- takeover came first and this transaction fails here. Renewals and a
-- release by the owner itself do not wait for it.
CREATE FUNCTION lease_fence(p_stage text, p_owner text, p_parts int[], p_epochs bigint[])
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ok int;
BEGIN
    SELECT count(*) INTO ok FROM (
        SELECT 1 FROM leases l
        JOIN unnest(p_parts, p_epochs) AS f(partition, epoch)
          ON l.partition = f.partition AND l.epoch = f.epoch
        WHERE l.stage = p_stage AND l.owner = p_owner
        ORDER BY l.partition
        FOR KEY SHARE OF l) held;
    IF ok <> cardinality(p_parts) THEN
        RAISE EXCEPTION 'lease lost: % % no longer holds all of partitions % at epochs %',
            p_stage, p_owner, p_parts, p_epochs
            USING ERRCODE = 'PL409';
    END IF;
END
$$;
