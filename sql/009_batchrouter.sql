-- The batchrouter (batchrouter/engine.c): batch_rt jobs grouped per
-- connection (source, destination) into batches uploaded to object storage
-- or loaded into a warehouse.
--
-- Progress is per connection and partition (batch_cursors), so a slow or
-- failing destination never holds back another. A batch is planned first:
-- its exact job ranges are journaled (batch_journal) in a fenced
-- transaction committed before any upload, so a retry after a crash reads
-- the same events in the same order and writes the same object (same key,
-- same bytes) or the same warehouse load id. After the upload succeeded,
-- batch_done moves the connection's cursors to the ends of the ranges
-- (compare-and-set) and deletes the journal row, in one transaction.
--
-- The stage's own cursor (cursors, stage 'batchrouter') is the low-water
-- mark of each partition: every batch_rt job at or below it is done for
-- its connection. batch_low_water advances it; maintain_queue's generic
-- check (no row beyond any cursor of the queue) then drops a batch_rt
-- dataset only once every connection is past it.

CREATE TABLE batch_cursors (
    destination_id text   NOT NULL,
    source_id      text   NOT NULL,
    partition      int    NOT NULL,
    last_job_id    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (destination_id, source_id, partition)
);

-- A planned batch: for each parts[i], the connection's jobs with
-- from_ids[i] < job_id <= to_ids[i]. home is its smallest partition: the
-- instance holding that lease executes the batch (any instance may, the
-- result is the same); while the row exists no other batch of the
-- connection takes rows of its partitions.
CREATE TABLE batch_journal (
    batch_id         uuid        PRIMARY KEY,
    source_id        text        NOT NULL,
    destination_id   text        NOT NULL,
    home             int         NOT NULL,
    parts            int[]       NOT NULL,
    from_ids         bigint[]    NOT NULL,
    to_ids           bigint[]    NOT NULL,
    nevents          int         NOT NULL,
    nbytes           bigint      NOT NULL,
    first_created_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         int         NOT NULL DEFAULT 0,
    first_failed_at  timestamptz,
    last_error       text
);
CREATE INDEX batch_journal_conn ON batch_journal (destination_id, source_id);

-- Advances the low-water mark of the given partitions: up to just below the
-- first job not yet done for its connection, or to the newest job when all
-- are done. Ids commit in increasing order within a partition (writers
-- lock it first), so the newest id read first bounds what the second
-- statement may look at, and nothing below it can still appear. Costs about
-- the jobs beyond the old mark. Returns, per partition whose mark is held,
-- the connection of the job that holds it (a connection no longer in the
-- workspace config is then drained into dead letters by the batchrouter).
CREATE FUNCTION batch_low_water(p_parts int[])
RETURNS TABLE (partition int, source_id text, destination_id text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    p    int;
    lw   bigint;
    mx   bigint;
    f    record;
    mark bigint;
BEGIN
    FOREACH p IN ARRAY p_parts LOOP
        SELECT c.last_job_id INTO lw FROM cursors c WHERE c.stage = 'batchrouter' AND c.partition = p;
        CONTINUE WHEN NOT FOUND;
        SELECT max(j.job_id) INTO mx FROM batch_rt_jobs j WHERE j.partition = p AND j.job_id > lw;
        CONTINUE WHEN mx IS NULL;
        SELECT j.job_id, j.source_id, j.destination_id INTO f
        FROM batch_rt_jobs j
        LEFT JOIN batch_cursors bc ON bc.destination_id = j.destination_id
             AND bc.source_id = j.source_id AND bc.partition = j.partition
        WHERE j.partition = p AND j.job_id > lw AND j.job_id <= mx
          AND j.job_id > coalesce(bc.last_job_id, 0)
        ORDER BY j.job_id LIMIT 1;
        IF FOUND THEN
            mark := f.job_id - 1;
            partition := p;
            source_id := f.source_id;
            destination_id := f.destination_id;
            RETURN NEXT;
        ELSE
            mark := mx;
        END IF;
        UPDATE cursors c SET last_job_id = mark
        WHERE c.stage = 'batchrouter' AND c.partition = p AND c.last_job_id < mark;
    END LOOP;
END $$;

-- Plans the next batch of connection (p_source, p_dest) over partitions
-- p_parts (the caller's leases, fenced in the same transaction). A batch
-- already journaled whose home is among p_parts is returned as it is
-- (resumed = true). Otherwise the connection's oldest jobs beyond its
-- cursors, skipping partitions a journaled batch of it still holds, at
-- most p_max_events and about p_max_bytes (the job that crosses it is the
-- last), are journaled as a new batch when the batch is full or p_force
-- (its upload interval passed). Returns no row when there is nothing to do.
CREATE FUNCTION batch_plan(p_source text, p_dest text, p_parts int[], p_max_events int,
                           p_max_bytes bigint, p_force boolean)
RETURNS TABLE (batch_id uuid, nevents int, first_created_ms bigint, attempts int,
               first_failed_ms bigint, resumed boolean, home int)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b       batch_journal%ROWTYPE;
    g       record;
BEGIN
    SELECT * INTO b FROM batch_journal j
    WHERE j.destination_id = p_dest AND j.source_id = p_source AND j.home = ANY (p_parts)
    ORDER BY j.created_at LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT b.batch_id, b.nevents,
            (extract(epoch FROM b.first_created_at) * 1000)::bigint, b.attempts,
            (extract(epoch FROM b.first_failed_at) * 1000)::bigint, true, b.home;
        RETURN;
    END IF;
    INSERT INTO batch_cursors (destination_id, source_id, partition)
    SELECT p_dest, p_source, p FROM unnest(p_parts) AS p
    ON CONFLICT DO NOTHING;
    WITH free AS (
        SELECT c.partition, c.last_job_id AS cur, greatest(c.last_job_id, lw.last_job_id) AS lo
        FROM batch_cursors c
        JOIN cursors lw ON lw.stage = 'batchrouter' AND lw.partition = c.partition
        WHERE c.destination_id = p_dest AND c.source_id = p_source AND c.partition = ANY (p_parts)
          AND NOT EXISTS (SELECT 1 FROM batch_journal j
                          WHERE j.destination_id = p_dest AND j.source_id = p_source
                            AND c.partition = ANY (j.parts))
        FOR UPDATE OF c
    ), rows AS (
        SELECT r.job_id, r.partition, r.len, r.created_at
        FROM free f
        CROSS JOIN LATERAL (
            SELECT j.job_id, j.partition, octet_length(j.payload) + 1 AS len, j.created_at
            FROM batch_rt_jobs j
            WHERE j.partition = f.partition AND j.job_id > f.lo
              AND j.destination_id = p_dest AND j.source_id = p_source
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
           (SELECT coalesce(max(run), 0) FROM taken) AS bytes,
           (SELECT min(created_at) FROM taken) AS first
    INTO g;
    IF g.n = 0 OR (NOT p_force AND g.n < p_max_events AND g.bytes < p_max_bytes) THEN
        RETURN;
    END IF;
    INSERT INTO batch_journal (batch_id, source_id, destination_id, home, parts, from_ids, to_ids,
                               nevents, nbytes, first_created_at)
    VALUES (gen_random_uuid(), p_source, p_dest, g.parts[1], g.parts, g.froms, g.tos, g.n,
            g.bytes, g.first)
    RETURNING * INTO b;
    RETURN QUERY SELECT b.batch_id, b.nevents,
        (extract(epoch FROM b.first_created_at) * 1000)::bigint, 0, NULL::bigint, false, b.home;
END $$;

-- The events of a journaled batch, in job order.
CREATE FUNCTION batch_events(p_batch uuid)
RETURNS TABLE (job_id bigint, payload text)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT j.job_id, j.payload
    FROM batch_journal b
    CROSS JOIN LATERAL unnest(b.parts, b.from_ids, b.to_ids) AS r(p, lo, hi)
    JOIN batch_rt_jobs j ON j.partition = r.p AND j.job_id > r.lo AND j.job_id <= r.hi
    WHERE b.batch_id = p_batch AND j.destination_id = b.destination_id
      AND j.source_id = b.source_id
    ORDER BY j.job_id
$$;

-- The batch is delivered (or dead-lettered): its connection's cursors move
-- to the ends of its ranges, compare-and-set, its journal row goes and the
-- low-water marks of its partitions advance. Raises (SQLSTATE PB404) when
-- the batch is no longer journaled: someone else finished it.
CREATE FUNCTION batch_done(p_batch uuid) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b batch_journal%ROWTYPE;
    n int;
BEGIN
    SELECT * INTO b FROM batch_journal WHERE batch_id = p_batch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % is no longer pending', p_batch USING ERRCODE = 'PB404';
    END IF;
    UPDATE batch_cursors c SET last_job_id = r.hi
    FROM unnest(b.parts, b.from_ids, b.to_ids) AS r(p, lo, hi)
    WHERE c.destination_id = b.destination_id AND c.source_id = b.source_id
      AND c.partition = r.p AND c.last_job_id = r.lo;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM check_cursors(n, cardinality(b.parts));
    DELETE FROM batch_journal WHERE batch_id = p_batch;
    PERFORM batch_low_water(b.parts);
    RETURN b.nevents;
END $$;

-- A failed attempt: counted with its reason; returns how long ago (ms) the
-- first failure of the batch was, which decides when it is given up.
CREATE FUNCTION batch_failed(p_batch uuid, p_error text) RETURNS bigint
LANGUAGE sql SET search_path FROM CURRENT AS $$
    UPDATE batch_journal
    SET attempts = attempts + 1, first_failed_at = coalesce(first_failed_at, now()),
        last_error = p_error
    WHERE batch_id = p_batch
    RETURNING (extract(epoch FROM now() - first_failed_at) * 1000)::bigint
$$;

-- Gives a batch up: every event goes to dead_letters (stage 'batchrouter',
-- queue 'batch_rt', replayable), then the batch is done.
CREATE FUNCTION batch_dead(p_batch uuid, p_status int, p_reason text, p_response text)
RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    tries int;
BEGIN
    SELECT b.attempts INTO tries FROM batch_journal b WHERE b.batch_id = p_batch;
    INSERT INTO dead_letters (queue, job_id, stage, partition, workspace_id, source_id,
                              destination_id, user_id, status_code, reason, response, payload,
                              attempts)
    SELECT 'batch_rt', j.job_id, 'batchrouter', j.partition, j.workspace_id, j.source_id,
           j.destination_id, j.user_id, p_status, p_reason, p_response, j.payload,
           greatest(coalesce(tries, 1), 1)
    FROM batch_journal b
    CROSS JOIN LATERAL unnest(b.parts, b.from_ids, b.to_ids) AS r(p, lo, hi)
    JOIN batch_rt_jobs j ON j.partition = r.p AND j.job_id > r.lo AND j.job_id <= r.hi
    WHERE b.batch_id = p_batch AND j.destination_id = b.destination_id
      AND j.source_id = b.source_id
    ORDER BY j.job_id;
    RETURN batch_done(p_batch);
END $$;

-- replay_dead_letters also re-queues the batchrouter's dead letters, as new
-- batch_rt jobs of their partition (queue 3 in the lock order gw, rt,
-- batch_rt); everything else is as in 006.
CREATE OR REPLACE FUNCTION replay_dead_letters(p_destination text, p_id bigint) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ids bigint[];
    t text;
    n int := 0;
    m int;
BEGIN
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids
    FROM (SELECT id FROM dead_letters
          WHERE stage IN ('processor', 'router', 'batchrouter') AND replayed_at IS NULL
            AND partition IS NOT NULL
            AND (p_destination IS NULL OR destination_id = p_destination)
            AND (p_id IS NULL OR id = p_id)
          ORDER BY id
          FOR UPDATE) d;
    IF cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(q, p)
    FROM (SELECT DISTINCT CASE stage WHEN 'processor' THEN 1 WHEN 'router' THEN 2 ELSE 3 END AS q,
                 partition AS p
          FROM dead_letters WHERE id = ANY (ids)
          ORDER BY 1, 2) parts;
    SELECT table_name INTO t FROM datasets WHERE queue = 'gw' ORDER BY idx DESC LIMIT 1;
    EXECUTE format('INSERT INTO %I (partition, workspace_id, source_id, destination_id, user_id, payload)'
                   ' SELECT partition, workspace_id, source_id, destination_id, user_id, payload'
                   ' FROM dead_letters WHERE id = ANY ($1) AND stage = ''processor'' ORDER BY id', t)
        USING ids;
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    SELECT table_name INTO t FROM datasets WHERE queue = 'rt' ORDER BY idx DESC LIMIT 1;
    EXECUTE format('INSERT INTO %I (partition, workspace_id, source_id, destination_id, user_id, payload)'
                   ' SELECT partition, workspace_id, source_id, destination_id, user_id, payload'
                   ' FROM dead_letters WHERE id = ANY ($1) AND stage = ''router'' ORDER BY id', t)
        USING ids;
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    SELECT table_name INTO t FROM datasets WHERE queue = 'batch_rt' ORDER BY idx DESC LIMIT 1;
    EXECUTE format('INSERT INTO %I (partition, workspace_id, source_id, destination_id, user_id, payload)'
                   ' SELECT partition, workspace_id, source_id, destination_id, user_id, payload'
                   ' FROM dead_letters WHERE id = ANY ($1) AND stage = ''batchrouter'' ORDER BY id', t)
        USING ids;
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    UPDATE dead_letters SET replayed_at = now() WHERE id = ANY (ids);
    RETURN n;
END $$;
