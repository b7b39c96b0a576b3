-- maintain_queue never drops a dataset holding rows in a partition that has
-- no cursor (for example rows written by a process configured with more
-- partitions than the schema): nobody has read them, so dropping the table
-- would delete acknowledged events. Such a dataset stays, and the function
-- raises a warning naming it, until an operator moves the rows.
CREATE OR REPLACE FUNCTION maintain_queue(q text, max_bytes bigint, max_age_s int) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    newest  datasets%ROWTYPE;
    d       datasets%ROWTYPE;
    pending boolean;
    n_empty boolean;
    lo      int;
    hi      int;
    covered int;
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
        -- Partitions are small integers and the (partition, job_id) index
        -- gives their range cheaply; every partition in it needs a cursor.
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
