-- The raw archive (batchrouter/engine.c, KIND_ARCHIVE): the gw events of
-- every source whose workspace asks for it (settings.dataRetention.
-- storagePreferences.gatewayDumps, as RudderStack's jobs backup) are
-- written to object storage as gzip JSON Lines before their gw dataset is
-- dropped. The same machinery as the batchrouter's batches (009): per
-- source and partition cursors (archive_cursors), a journal of planned
-- batches committed before any upload (archive_journal), so a retry writes
-- the same object, and a low-water mark per partition (archive_low) below
-- which every gw job is archived or not to be archived.
--
-- archive_sources is the set of sources being archived, written by the
-- batchrouter from its workspace config. While it is not empty,
-- maintain_queue drops a gw dataset only when no row of it is beyond the
-- partition's archive_low; while it is empty the archive holds nothing
-- back (and the low-water marks follow the queue's head, so turning the
-- archive on archives from then on).

CREATE TABLE archive_sources (
    source_id    text PRIMARY KEY,
    workspace_id text NOT NULL
);

CREATE TABLE archive_low (
    partition   int    PRIMARY KEY,
    last_job_id bigint NOT NULL DEFAULT 0
);
INSERT INTO archive_low (partition)
SELECT partition FROM cursors WHERE stage = 'processor';

CREATE TABLE archive_cursors (
    source_id   text   NOT NULL,
    partition   int    NOT NULL,
    last_job_id bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (source_id, partition)
);

-- A planned archive object: the source's gw jobs with from_ids[i] < job_id
-- <= to_ids[i] in partition parts[i]. instance_id (of the planner) and the
-- creation times are part of the object's key, so whoever completes the
-- batch writes the same key.
CREATE TABLE archive_journal (
    batch_id         uuid        PRIMARY KEY,
    source_id        text        NOT NULL,
    workspace_id     text        NOT NULL,
    home             int         NOT NULL,
    parts            int[]       NOT NULL,
    from_ids         bigint[]    NOT NULL,
    to_ids           bigint[]    NOT NULL,
    nevents          int         NOT NULL,
    nbytes           bigint      NOT NULL,
    first_created_at timestamptz NOT NULL,
    last_created_at  timestamptz NOT NULL,
    instance_id      text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         int         NOT NULL DEFAULT 0,
    first_failed_at  timestamptz,
    last_error       text
);
CREATE INDEX archive_journal_source ON archive_journal (source_id);

-- Replaces the set of archived sources. Every batchrouter instance calls
-- it every few seconds, so the usual case (the same set) only reads. A
-- source that leaves the set forgets its planned batches: its rows no
-- longer hold any dataset.
CREATE FUNCTION archive_set_sources(p_sources text[], p_workspaces text[]) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n int;
BEGIN
    IF (SELECT coalesce(array_agg(k ORDER BY k), '{}')
        FROM (SELECT source_id || ' ' || workspace_id AS k FROM archive_sources) a)
       = (SELECT coalesce(array_agg(k ORDER BY k), '{}')
          FROM (SELECT s || ' ' || w AS k FROM unnest(p_sources, p_workspaces) AS u(s, w)) b) THEN
        RETURN cardinality(p_sources);
    END IF;
    -- writers of the set serialise here, so concurrent calls cannot deadlock
    PERFORM pg_advisory_xact_lock(hashtext('pintle.archive_sources'));
    DELETE FROM archive_journal WHERE source_id <> ALL (p_sources);
    DELETE FROM archive_sources WHERE source_id <> ALL (p_sources);
    INSERT INTO archive_sources (source_id, workspace_id)
    SELECT s, w FROM unnest(p_sources, p_workspaces) AS u(s, w)
    ON CONFLICT (source_id) DO UPDATE SET workspace_id = excluded.workspace_id
    WHERE archive_sources.workspace_id <> excluded.workspace_id;
    SELECT count(*) INTO n FROM archive_sources;
    RETURN n;
END $$;

-- Advances archive_low of the given partitions: up to just below the first
-- job of an archived source not yet archived, or to the newest job. As in
-- batch_low_water, the newest id read first bounds the second statement
-- (ids commit in increasing order within a partition).
CREATE FUNCTION archive_low_water(p_parts int[]) RETURNS void
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
        JOIN archive_sources s ON s.source_id = j.source_id
        LEFT JOIN archive_cursors ac ON ac.source_id = j.source_id AND ac.partition = j.partition
        WHERE j.partition = p AND j.job_id > lw AND j.job_id <= mx
          AND j.job_id > coalesce(ac.last_job_id, 0)
        ORDER BY j.job_id LIMIT 1;
        UPDATE archive_low a SET last_job_id = CASE WHEN f IS NULL THEN mx ELSE f - 1 END
        WHERE a.partition = p AND a.last_job_id < CASE WHEN f IS NULL THEN mx ELSE f - 1 END;
    END LOOP;
END $$;

-- Plans the next archive object of source p_source over partitions p_parts
-- (the caller's fenced leases): a journaled batch whose home is among them
-- is returned as it is (resumed); otherwise the source's oldest gw jobs
-- beyond its cursors (and beyond archive_low: jobs below it were passed
-- while the source was not archived), at most p_max_events and about
-- p_max_bytes, are journaled when the batch is full or p_force. Columns as
-- batch_plan's, then the last job's creation time and the instance id.
CREATE FUNCTION archive_plan(p_source text, p_workspace text, p_parts int[], p_max_events int,
                             p_max_bytes bigint, p_force boolean, p_instance text)
RETURNS TABLE (batch_id uuid, nevents int, first_created_ms bigint, attempts int,
               first_failed_ms bigint, resumed boolean, home int, last_created_ms bigint,
               instance_id text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b       archive_journal%ROWTYPE;
    g       record;
    was_journaled boolean := true;
BEGIN
    SELECT * INTO b FROM archive_journal j
    WHERE j.source_id = p_source AND j.home = ANY (p_parts)
    ORDER BY j.created_at LIMIT 1;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM archive_sources s WHERE s.source_id = p_source) THEN
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
               (SELECT coalesce(max(run), 0) FROM taken) AS bytes,
               (SELECT min(created_at) FROM taken) AS first,
               (SELECT max(created_at) FROM taken) AS last
        INTO g;
        IF g.n = 0 OR (NOT p_force AND g.n < p_max_events AND g.bytes < p_max_bytes) THEN
            RETURN;
        END IF;
        INSERT INTO archive_journal (batch_id, source_id, workspace_id, home, parts, from_ids,
                                     to_ids, nevents, nbytes, first_created_at, last_created_at,
                                     instance_id)
        VALUES (gen_random_uuid(), p_source, p_workspace, g.parts[1], g.parts, g.froms, g.tos,
                g.n, g.bytes, g.first, g.last, p_instance)
        RETURNING * INTO b;
        was_journaled := false;
    END IF;
    RETURN QUERY SELECT b.batch_id, b.nevents,
        (extract(epoch FROM b.first_created_at) * 1000)::bigint, b.attempts,
        (extract(epoch FROM b.first_failed_at) * 1000)::bigint, was_journaled,
        b.home, (extract(epoch FROM b.last_created_at) * 1000)::bigint, b.instance_id;
END $$;

-- The lines of a journaled archive batch, in job order: the fields of
-- RudderStack's jobs backup (userId, payload, createdAt, messageId).
CREATE FUNCTION archive_events(p_batch uuid)
RETURNS TABLE (job_id bigint, payload text, user_id text, created_at text)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT j.job_id, j.payload, j.user_id,
           to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    FROM archive_journal b
    CROSS JOIN LATERAL unnest(b.parts, b.from_ids, b.to_ids) AS r(p, lo, hi)
    JOIN gw_jobs j ON j.partition = r.p AND j.job_id > r.lo AND j.job_id <= r.hi
    WHERE b.batch_id = p_batch AND j.source_id = b.source_id
    ORDER BY j.job_id
$$;

-- The object is stored: the source's cursors move to the ends of the
-- batch's ranges (compare-and-set), the journal row goes, the low-water
-- marks advance. PB404 when the batch is no longer journaled.
CREATE FUNCTION archive_done(p_batch uuid) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b archive_journal%ROWTYPE;
    n int;
BEGIN
    SELECT * INTO b FROM archive_journal WHERE batch_id = p_batch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'archive batch % is no longer pending', p_batch USING ERRCODE = 'PB404';
    END IF;
    UPDATE archive_cursors c SET last_job_id = r.hi
    FROM unnest(b.parts, b.from_ids, b.to_ids) AS r(p, lo, hi)
    WHERE c.source_id = b.source_id AND c.partition = r.p AND c.last_job_id = r.lo;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM check_cursors(n, cardinality(b.parts));
    DELETE FROM archive_journal WHERE batch_id = p_batch;
    PERFORM archive_low_water(b.parts);
    RETURN b.nevents;
END $$;

-- A failed upload: counted with its reason; returns ms since the first
-- failure. An archive batch is never given up (its events are still in
-- the queue, and the dataset stays until they are archived).
CREATE FUNCTION archive_failed(p_batch uuid, p_error text) RETURNS bigint
LANGUAGE sql SET search_path FROM CURRENT AS $$
    UPDATE archive_journal
    SET attempts = attempts + 1, first_failed_at = coalesce(first_failed_at, now()),
        last_error = p_error
    WHERE batch_id = p_batch
    RETURNING (extract(epoch FROM now() - first_failed_at) * 1000)::bigint
$$;

-- maintain_queue as in 004, and for gw while any source is archived: a
-- dataset with a row beyond its partition's archive_low is kept.
CREATE OR REPLACE FUNCTION maintain_queue(q text, max_bytes bigint, max_age_s int) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    newest   datasets%ROWTYPE;
    d        datasets%ROWTYPE;
    pending  boolean;
    n_empty  boolean;
    archived boolean;
    lo       int;
    hi       int;
    covered  int;
    dropped  int := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pintle.maintain.' || q)) THEN
        RETURN 0;
    END IF;
    SELECT * INTO newest FROM datasets WHERE queue = q ORDER BY idx DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM new_dataset(q);
        RETURN 0;
    END IF;
    EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I)', newest.table_name) INTO n_empty;
    IF NOT n_empty AND (pg_relation_size(newest.table_name::regclass) >= max_bytes
                        OR newest.created_at < now() - make_interval(secs => max_age_s)) THEN
        PERFORM new_dataset(q);
    END IF;
    archived := q = 'gw' AND EXISTS (SELECT 1 FROM archive_sources);
    SET LOCAL lock_timeout = '200ms';
    FOR d IN SELECT * FROM datasets WHERE queue = q AND idx < newest.idx ORDER BY idx LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', d.table_name);
        EXCEPTION WHEN lock_not_available THEN
            EXIT;
        END;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM cursors c WHERE c.queue = $1 AND EXISTS '
                       '(SELECT 1 FROM %I j WHERE j.partition = c.partition AND j.job_id > c.last_job_id))',
                       d.table_name)
            INTO pending USING q;
        EXIT WHEN pending;
        IF archived THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM archive_low a WHERE EXISTS '
                           '(SELECT 1 FROM %I j WHERE j.partition = a.partition AND j.job_id > a.last_job_id))',
                           d.table_name)
                INTO pending;
            EXIT WHEN pending;
        END IF;
        EXECUTE format('SELECT min(partition), max(partition) FROM %I', d.table_name) INTO lo, hi;
        IF lo IS NOT NULL THEN
            SELECT count(DISTINCT partition) INTO covered FROM cursors
            WHERE queue = q AND partition BETWEEN lo AND hi;
            IF lo < 0 OR covered <> hi - lo + 1 THEN
                RAISE WARNING 'dataset % of queue % holds rows in partitions % to % without a cursor; it is kept',
                    d.table_name, q, lo, hi;
                EXIT;
            END IF;
        END IF;
        EXECUTE format('DROP TABLE %I', d.table_name);
        DELETE FROM datasets WHERE queue = d.queue AND idx = d.idx;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
