-- The raw archive's set of sources, per batchrouter instance (013 kept one
-- set that each instance replaced with its own every few seconds: two
-- instances whose configs disagreed, as in a rolling deploy, made it flip,
-- and each flip to a set without a source forgot its planned batches and
-- let its low-water marks pass jobs not archived yet).
--
-- Now each instance states its own sources (rows keyed by its lease owner
-- id, as in instances), and a source is archived while any live instance
-- says so; the rows of an instance that is gone (not in instances, and
-- owning no lease: stopped, or dead, forgotten by the lease ticks and its
-- partitions taken over) are removed by the next instance that writes its
-- set. An instance paused past its TTL whose leases nobody took yet still
-- counts: it may resume and finish an upload. With no batchrouter running nobody
-- removes anything, so the archive keeps holding the gw datasets back.
-- Instances that disagree hold the source's datasets back in the
-- partitions leased by an instance that does not archive it, until they
-- agree: nothing is dropped unarchived.
--
-- archive_plan now locks the source's rows (FOR KEY SHARE) while it plans,
-- so a set that removes the source waits for it and then removes its new
-- journal row too (013 could leave it behind, holding datasets for ever);
-- and it scans the queue only when the caller forces a plan (its upload
-- interval passed, or its last batch was written and there may be more):
-- deciding every poll whether a batch was full read up to max_events rows
-- per partition and source every second.

ALTER TABLE archive_sources ADD COLUMN instance_id text NOT NULL DEFAULT '';
ALTER TABLE archive_sources DROP CONSTRAINT archive_sources_pkey;
ALTER TABLE archive_sources ADD PRIMARY KEY (source_id, instance_id);
ALTER TABLE archive_sources ALTER COLUMN instance_id DROP DEFAULT;

DROP FUNCTION archive_set_sources(text[], text[]);

CREATE FUNCTION archive_instance_gone(p_instance text) RETURNS boolean
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT NOT EXISTS (SELECT 1 FROM instances i
                       WHERE i.stage = 'batchrouter' AND i.instance_id = p_instance)
       AND NOT EXISTS (SELECT 1 FROM leases l
                       WHERE l.stage = 'batchrouter' AND l.owner = p_instance)
$$;

-- Replaces the sources instance p_instance archives, and forgets the rows
-- of instances that are gone. A source no instance archives any more
-- forgets its planned batches (its rows no longer hold any dataset). The
-- usual case (nothing changed) only reads. Returns the number of archived
-- sources.
CREATE FUNCTION archive_set_sources(p_instance text, p_sources text[], p_workspaces text[])
RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n int;
BEGIN
    IF (SELECT coalesce(array_agg(k ORDER BY k), '{}')
        FROM (SELECT s.source_id || ' ' || s.workspace_id AS k FROM archive_sources s
              WHERE s.instance_id = p_instance) a)
       = (SELECT coalesce(array_agg(k ORDER BY k), '{}')
          FROM (SELECT s || ' ' || w AS k FROM unnest(p_sources, p_workspaces) AS u(s, w)) b)
       AND NOT EXISTS (SELECT 1 FROM archive_sources s WHERE archive_instance_gone(s.instance_id)) THEN
        SELECT count(DISTINCT s.source_id) INTO n FROM archive_sources s;
        RETURN n;
    END IF;
    -- writers of the set serialise here, so concurrent calls cannot deadlock
    PERFORM pg_advisory_xact_lock(hashtext('pintle.archive_sources'));
    -- waits for the plans that hold these rows (FOR KEY SHARE), locking
    -- them in the plans' order (no deadlock with a plan)
    PERFORM 1 FROM archive_sources s
    WHERE (s.instance_id = p_instance AND s.source_id <> ALL (p_sources))
       OR archive_instance_gone(s.instance_id)
    ORDER BY s.source_id, s.instance_id FOR UPDATE;
    DELETE FROM archive_sources s
    WHERE (s.instance_id = p_instance AND s.source_id <> ALL (p_sources))
       OR archive_instance_gone(s.instance_id);
    INSERT INTO archive_sources (source_id, instance_id, workspace_id)
    SELECT s, p_instance, w FROM unnest(p_sources, p_workspaces) AS u(s, w)
    ON CONFLICT (source_id, instance_id) DO UPDATE SET workspace_id = excluded.workspace_id
    WHERE archive_sources.workspace_id <> excluded.workspace_id;
    -- the sources no instance archives now forget their batches (a new
    -- snapshot: it sees the journal rows those plans committed)
    DELETE FROM archive_journal j
    WHERE NOT EXISTS (SELECT 1 FROM archive_sources s WHERE s.source_id = j.source_id);
    SELECT count(DISTINCT s.source_id) INTO n FROM archive_sources s;
    RETURN n;
END $$;

-- As in 013, with a source counted once however many instances list it.
CREATE OR REPLACE FUNCTION archive_low_water(p_parts int[]) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    p    int;
    lw   bigint;
    mx   bigint;
    f    bigint;
BEGIN
    FOREACH p IN ARRAY p_parts LOOP
        SELECT a.last_job_id INTO lw FROM archive_low a WHERE a.partition = p;
        CONTINUE WHEN NOT FOUND;
        SELECT max(j.job_id) INTO mx FROM gw_jobs j WHERE j.partition = p AND j.job_id > lw;
        CONTINUE WHEN mx IS NULL;
        SELECT j.job_id INTO f
        FROM gw_jobs j
        LEFT JOIN archive_cursors ac ON ac.source_id = j.source_id AND ac.partition = j.partition
        WHERE j.partition = p AND j.job_id > lw AND j.job_id <= mx
          AND j.job_id > coalesce(ac.last_job_id, 0)
          AND EXISTS (SELECT 1 FROM archive_sources s WHERE s.source_id = j.source_id)
        ORDER BY j.job_id LIMIT 1;
        UPDATE archive_low a SET last_job_id = CASE WHEN f IS NULL THEN mx ELSE f - 1 END
        WHERE a.partition = p AND a.last_job_id < CASE WHEN f IS NULL THEN mx ELSE f - 1 END;
    END LOOP;
END $$;

-- The object key's prefix is journaled too (with the workspace and the
-- instance, the key comes whole from the journal: a config changed
-- between an upload and its commit cannot name a second object). NULL in
-- rows journaled by 013: the caller's prefix then.
ALTER TABLE archive_journal ADD COLUMN prefix text;

-- As in 013, except: the source's rows are locked while planning; without
-- p_force only a journaled batch is returned (no scan); with p_force
-- whatever is pending, up to p_max_events / about p_max_bytes, is
-- journaled; times in whole milliseconds are truncated, not rounded (a key
-- never names the next second, hour or day); the batch's workspace and key
-- prefix are returned as journaled, and whether more may be pending (the
-- batch was full, by events or bytes, or resumed: plan again at once).
DROP FUNCTION archive_plan(text, text, int[], int, bigint, boolean, text);
CREATE FUNCTION archive_plan(p_source text, p_workspace text, p_parts int[], p_max_events int,
                             p_max_bytes bigint, p_force boolean, p_instance text, p_prefix text)
RETURNS TABLE (batch_id uuid, nevents int, first_created_ms bigint, attempts int,
               first_failed_ms bigint, resumed boolean, home int, last_created_ms bigint,
               instance_id text, workspace_id text, prefix text, more boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b       archive_journal%ROWTYPE;
    g       record;
    was_journaled boolean := true;
    journaled     boolean;
    v_more        boolean := true; -- a resumed batch: perhaps more after it
BEGIN
    PERFORM 1 FROM archive_sources s WHERE s.source_id = p_source
    ORDER BY s.source_id, s.instance_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO b FROM archive_journal j
    WHERE j.source_id = p_source AND j.home = ANY (p_parts)
    ORDER BY j.created_at LIMIT 1;
    journaled := FOUND;
    IF journaled AND b.prefix IS NULL AND p_prefix IS NOT NULL THEN
        -- journaled by 013, or while the bucket was unusable: pinned now,
        -- so every retry names the same key
        UPDATE archive_journal j SET prefix = p_prefix WHERE j.batch_id = b.batch_id;
        b.prefix := p_prefix;
    END IF;
    IF NOT journaled THEN
        IF NOT p_force THEN
            RETURN;
        END IF;
        INSERT INTO archive_cursors (source_id, partition)
        SELECT p_source, p FROM unnest(p_parts) AS p
        ON CONFLICT DO NOTHING;
        -- jobs at or below the low-water mark are not to be archived by
        -- this source any more: its cursors start there
        UPDATE archive_cursors c SET last_job_id = a.last_job_id
        FROM archive_low a
        WHERE c.source_id = p_source AND c.partition = ANY (p_parts)
          AND a.partition = c.partition AND c.last_job_id < a.last_job_id
          AND NOT EXISTS (SELECT 1 FROM archive_journal j
                          WHERE j.source_id = p_source AND c.partition = ANY (j.parts));
        WITH free AS (
            SELECT c.partition, c.last_job_id AS cur
            FROM archive_cursors c
            WHERE c.source_id = p_source AND c.partition = ANY (p_parts)
              AND NOT EXISTS (SELECT 1 FROM archive_journal j
                              WHERE j.source_id = p_source AND c.partition = ANY (j.parts))
            FOR UPDATE OF c
        ), rows AS (
            SELECT r.job_id, r.partition, r.len, r.created_at
            FROM free f
            CROSS JOIN LATERAL (
                SELECT j.job_id, j.partition, octet_length(j.payload) + 1 AS len, j.created_at
                FROM gw_jobs j
                WHERE j.partition = f.partition AND j.job_id > f.cur AND j.source_id = p_source
                ORDER BY j.job_id LIMIT p_max_events) r
            ORDER BY r.job_id LIMIT p_max_events
        ), cum AS (
            SELECT r.*, sum(r.len) OVER (ORDER BY r.job_id) AS run FROM rows r
        ), taken AS (
            SELECT * FROM cum WHERE run - len < p_max_bytes
        ), per AS (
            SELECT t.partition, f.cur, max(t.job_id) AS hi FROM taken t JOIN free f USING (partition)
            GROUP BY t.partition, f.cur
        )
        SELECT (SELECT array_agg(per.partition ORDER BY per.partition) FROM per) AS parts,
               (SELECT array_agg(per.cur ORDER BY per.partition) FROM per) AS froms,
               (SELECT array_agg(per.hi ORDER BY per.partition) FROM per) AS tos,
               (SELECT count(*) FROM taken) AS n,
               (SELECT count(*) FROM rows) AS seen,
               (SELECT coalesce(max(run), 0) FROM taken) AS bytes,
               (SELECT min(created_at) FROM taken) AS first,
               (SELECT max(created_at) FROM taken) AS last
        INTO g;
        IF g.n = 0 THEN
            RETURN;
        END IF;
        v_more := g.n >= p_max_events OR g.seen > g.n;
        INSERT INTO archive_journal (batch_id, source_id, workspace_id, home, parts, from_ids,
                                     to_ids, nevents, nbytes, first_created_at, last_created_at,
                                     instance_id, prefix)
        VALUES (gen_random_uuid(), p_source, p_workspace, g.parts[1], g.parts, g.froms, g.tos,
                g.n, g.bytes, g.first, g.last, p_instance, p_prefix)
        RETURNING * INTO b;
        was_journaled := false;
    END IF;
    RETURN QUERY SELECT b.batch_id, b.nevents,
        floor(extract(epoch FROM b.first_created_at) * 1000)::bigint, b.attempts,
        floor(extract(epoch FROM b.first_failed_at) * 1000)::bigint, was_journaled,
        b.home, floor(extract(epoch FROM b.last_created_at) * 1000)::bigint, b.instance_id,
        b.workspace_id, coalesce(b.prefix, p_prefix),
        v_more;
END $$;
