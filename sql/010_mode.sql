-- Operations (issue 10): the pipeline's mode, paused destinations, the
-- start-up record behind the automatic degraded mode, and the cheap queue
-- statistics that /metrics and pintlectl share.

-- One row: normal, or degraded (gateways keep accepting and storing;
-- processors and routers stop forwarding). changed_at also bounds which
-- crashes count for the automatic trigger: only those after the last change.
CREATE TABLE ops_mode (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    mode       text        NOT NULL DEFAULT 'normal' CHECK (mode IN ('normal', 'degraded')),
    reason     text        NOT NULL DEFAULT '',
    changed_by text        NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ops_mode DEFAULT VALUES;

-- Destinations an operator paused: routers and batchrouters deliver nothing
-- to them (their jobs wait, in order) until resumed.
CREATE TABLE paused_destinations (
    destination_id text        PRIMARY KEY,
    reason         text        NOT NULL DEFAULT '',
    paused_at      timestamptz NOT NULL DEFAULT now()
);

-- Every start of a consuming stage's process; stopped_at is set by a
-- graceful stop. A start whose process is gone without stopping (its
-- instance no longer live) is a crash.
CREATE TABLE starts (
    id          bigserial   PRIMARY KEY,
    stage       text        NOT NULL,
    instance_id text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz
);
CREATE INDEX starts_stage ON starts (stage, started_at);

-- Dead letters not replayed, counted per scrape interval: an index over
-- those rows only.
CREATE INDEX dead_letters_pending ON dead_letters (stage) WHERE replayed_at IS NULL;

-- Sets the mode; returns true when it changed.
CREATE FUNCTION set_mode(p_mode text, p_reason text, p_by text) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n int;
BEGIN
    UPDATE ops_mode SET mode = p_mode, reason = coalesce(p_reason, ''),
                        changed_by = coalesce(p_by, ''), changed_at = now()
    WHERE mode <> p_mode;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END $$;

-- Records a start of stage by instance; returns the row's id. Forgets
-- starts older than a day.
CREATE FUNCTION record_start(p_stage text, p_instance text) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    i bigint;
BEGIN
    DELETE FROM starts WHERE started_at < now() - interval '1 day';
    INSERT INTO starts (stage, instance_id) VALUES (p_stage, p_instance) RETURNING id INTO i;
    RETURN i;
END $$;

-- The automatic trigger: when some stage crashed more than p_limit times
-- in the last p_window_s seconds (and since the mode last changed), the
-- mode becomes degraded. A crash is a start not stopped gracefully whose
-- instance is not live, counted once it is older than p_grace_ms (the lease
-- ttl: a process that just started has no instance row yet, and one killed
-- a moment ago still looks live until its heartbeat expires). Called by
-- every instance every few seconds; p_limit 0 disables. Returns the mode.
CREATE FUNCTION check_restarts(p_limit int, p_window_s int, p_grace_ms int) RETURNS text
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    m ops_mode%ROWTYPE;
    worst record;
BEGIN
    SELECT * INTO m FROM ops_mode;
    IF p_limit <= 0 OR m.mode = 'degraded' THEN
        RETURN m.mode;
    END IF;
    SELECT s.stage, count(*) AS crashes INTO worst
    FROM starts s
    WHERE s.started_at > greatest(now() - make_interval(secs => p_window_s), m.changed_at)
      AND s.started_at < now() - make_interval(secs => p_grace_ms / 1000.0)
      AND s.stopped_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.stage = s.stage
                      AND i.instance_id = s.instance_id AND i.expires_at >= now())
    GROUP BY s.stage ORDER BY 2 DESC LIMIT 1;
    IF FOUND AND worst.crashes > p_limit THEN
        PERFORM set_mode('degraded',
                         format('%s crashed %s times in %s s (limit %s)', worst.stage,
                                worst.crashes, p_window_s, p_limit),
                         'automatic');
        RETURN 'degraded';
    END IF;
    RETURN m.mode;
END $$;

-- Pending jobs of a stage per destination: the rows beyond its cursors of
-- the given partitions (NULL: all), at most p_cap per partition (read in
-- job id order through each dataset's (partition, job_id) index, so the
-- cost is bounded by the cap, never by the table), and the creation time
-- of the oldest. gw jobs have destination '' (or the one destination of a
-- replayed dead letter).
CREATE FUNCTION queue_stats(p_stage text, p_parts int[], p_cap int)
RETURNS TABLE (destination_id text, pending bigint, oldest timestamptz, capped boolean)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT y.destination_id, sum(y.n)::bigint, min(y.oldest), bool_or(y.n >= p_cap)
    FROM (SELECT c.partition, x.destination_id, count(*) AS n, min(x.created_at) AS oldest
          FROM cursors c CROSS JOIN LATERAL (
              (SELECT j.destination_id, j.created_at FROM gw_jobs j
               WHERE c.queue = 'gw' AND j.partition = c.partition AND j.job_id > c.last_job_id
               ORDER BY j.job_id LIMIT p_cap)
              UNION ALL
              (SELECT j.destination_id, j.created_at FROM rt_jobs j
               WHERE c.queue = 'rt' AND j.partition = c.partition AND j.job_id > c.last_job_id
               ORDER BY j.job_id LIMIT p_cap)
              UNION ALL
              (SELECT j.destination_id, j.created_at FROM batch_rt_jobs j
               WHERE c.queue = 'batch_rt' AND j.partition = c.partition
                 AND j.job_id > c.last_job_id
               ORDER BY j.job_id LIMIT p_cap)) x
          WHERE c.stage = p_stage AND (p_parts IS NULL OR c.partition = ANY (p_parts))
          GROUP BY 1, 2) y
    GROUP BY 1
$$;

-- The router's jobs past its cursor that wait in rt_retries, per
-- destination: heads retrying, jobs parked behind them, and the first
-- failure of the oldest head. rt_retries holds only failing work.
CREATE FUNCTION retry_stats(p_parts int[])
RETURNS TABLE (destination_id text, retrying bigint, parked bigint, oldest timestamptz)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT r.destination_id, count(*) FILTER (WHERE NOT r.parked),
           count(*) FILTER (WHERE r.parked), min(r.first_failed_at)
    FROM rt_retries r
    WHERE p_parts IS NULL OR r.partition = ANY (p_parts)
    GROUP BY 1
$$;

-- An operator gives up retry rows (one job by id, or all of a destination,
-- optionally one user): they become dead letters (reason "aborted by
-- operator") and, for every user that lost its head, the smallest remaining
-- row becomes the head, due now, so nothing stays parked behind a row that
-- is gone. Returns the rows aborted.
CREATE FUNCTION abort_retries(p_id bigint, p_destination text, p_user text) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n int;
BEGIN
    IF p_id IS NULL AND p_destination IS NULL THEN
        RAISE EXCEPTION 'abort_retries needs a job id or a destination';
    END IF;
    CREATE TEMP TABLE aborted ON COMMIT DROP AS
    WITH gone AS (
        DELETE FROM rt_retries r
        WHERE (p_id IS NULL OR r.job_id = p_id)
          AND (p_destination IS NULL OR r.destination_id = p_destination)
          AND (p_user IS NULL OR r.user_id = p_user)
        RETURNING r.*)
    SELECT * FROM gone;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO dead_letters (queue, job_id, stage, workspace_id, source_id, destination_id,
                              user_id, status_code, reason, response, payload, attempts,
                              partition)
    SELECT 'rt', a.job_id, 'router', a.workspace_id, a.source_id, a.destination_id, a.user_id,
           coalesce(a.last_status, 0), 'aborted by operator', a.last_error, a.payload,
           a.attempts, a.partition
    FROM aborted a ORDER BY a.job_id;
    UPDATE rt_retries r SET parked = false, next_retry_at = coalesce(r.next_retry_at, now())
    FROM (SELECT x.destination_id, x.user_id, min(x.job_id) AS first
          FROM rt_retries x
          JOIN (SELECT DISTINCT destination_id, user_id FROM aborted) u
            ON u.destination_id = x.destination_id AND u.user_id = x.user_id
          GROUP BY 1, 2) h
    WHERE r.job_id = h.first AND r.parked;
    DROP TABLE aborted;
    RETURN n;
END $$;
