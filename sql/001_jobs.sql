-- The jobs schema (DESIGN §3). Runs with search_path set to the pintle
-- schema; {{partitions}} is replaced by queue.partitions at install time.

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO meta VALUES ('partitions', '{{partitions}}');

-- One sequence for every queue. A writer takes its partitions' advisory
-- locks before COPY evaluates nextval, so within a partition ids commit in
-- increasing order and a reader's cursor never passes an uncommitted row.
CREATE SEQUENCE job_id_seq CACHE 1;

-- A queue is a parent table; its datasets are child tables (INHERITS).
-- Readers query the parent, writers COPY into the newest child, and a
-- consumed child is dropped, never DELETEd from.
CREATE TABLE jobs_template (
    job_id         bigint      NOT NULL DEFAULT nextval('job_id_seq'),
    partition      int         NOT NULL,
    workspace_id   text        NOT NULL,
    source_id      text        NOT NULL,
    destination_id text        NOT NULL DEFAULT '',
    user_id        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    payload        text        NOT NULL
);
CREATE TABLE gw_jobs       (LIKE jobs_template INCLUDING DEFAULTS);
CREATE TABLE rt_jobs       (LIKE jobs_template INCLUDING DEFAULTS);
CREATE TABLE batch_rt_jobs (LIKE jobs_template INCLUDING DEFAULTS);
DROP TABLE jobs_template;

CREATE TABLE datasets (
    queue      text        NOT NULL,
    idx        int         NOT NULL,
    table_name text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, idx)
);

-- Per consumer stage and partition: the last job id handed on. Advanced in
-- the same transaction that writes the stage's outputs (exactly-once hand-off).
CREATE TABLE cursors (
    stage       text   NOT NULL,
    queue       text   NOT NULL,
    partition   int    NOT NULL,
    last_job_id bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (stage, partition)
);
INSERT INTO cursors (stage, queue, partition)
SELECT s.stage, s.queue, p
FROM (VALUES ('processor', 'gw'), ('router', 'rt'), ('batchrouter', 'batch_rt')) AS s(stage, queue),
     generate_series(0, {{partitions}} - 1) AS p;

-- Events the transformer rejected and deliveries aborted after retries.
-- Rows carry their own payload copy so datasets can be dropped under them.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,
    queue          text        NOT NULL,
    job_id         bigint      NOT NULL,
    stage          text        NOT NULL,
    workspace_id   text        NOT NULL,
    source_id      text        NOT NULL,
    destination_id text        NOT NULL DEFAULT '',
    user_id        text        NOT NULL,
    status_code    int         NOT NULL,
    reason         text        NOT NULL,
    response       text,
    payload        text        NOT NULL,
    attempts       int         NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz
);
CREATE INDEX dead_letters_destination ON dead_letters (destination_id, created_at);

-- Creates the next dataset of queue q and returns its table name.
CREATE FUNCTION new_dataset(q text) RETURNS text
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    i int;
    t text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pintle.datasets.' || q));
    SELECT coalesce(max(idx), 0) + 1 INTO i FROM datasets WHERE queue = q;
    t := q || '_jobs_' || i;
    EXECUTE format('CREATE TABLE %I () INHERITS (%I)', t, q || '_jobs');
    EXECUTE format('CREATE INDEX %I ON %I (partition, job_id)', t || '_p', t);
    INSERT INTO datasets (queue, idx, table_name) VALUES (q, i, t);
    RETURN t;
END $$;

-- Rotates the newest dataset of q when it reaches max_bytes, or is older
-- than max_age_s and not empty; then drops, oldest first, every older
-- dataset that holds no row beyond the cursor of any stage consuming q.
-- Holding ACCESS EXCLUSIVE while checking means no writer can still be
-- adding rows to the dataset being dropped. Returns datasets dropped.
CREATE FUNCTION maintain_queue(q text, max_bytes bigint, max_age_s int) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    newest  datasets%ROWTYPE;
    d       datasets%ROWTYPE;
    pending boolean;
    n_empty boolean;
    dropped int := 0;
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
        EXECUTE format('DROP TABLE %I', d.table_name);
        DELETE FROM datasets WHERE queue = d.queue AND idx = d.idx;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT new_dataset('gw');
SELECT new_dataset('rt');
SELECT new_dataset('batch_rt');
