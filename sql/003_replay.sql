-- Dead letters remember their partition, so an operator can replay them.
ALTER TABLE dead_letters ADD COLUMN partition int;

-- Re-queues the router's dead letters (optionally of one destination, or one
-- dead letter by id) as new rt jobs, and marks them replayed. Partitions are
-- locked in ascending order before job ids are taken, as every writer does.
-- Returns the number of jobs re-queued.
CREATE FUNCTION replay_dead_letters(p_destination text, p_id bigint) RETURNS int
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    t text;
    n int;
BEGIN
    PERFORM pg_advisory_xact_lock(2, p)
    FROM (SELECT DISTINCT partition AS p FROM dead_letters
          WHERE stage = 'router' AND replayed_at IS NULL AND partition IS NOT NULL
            AND (p_destination IS NULL OR destination_id = p_destination)
            AND (p_id IS NULL OR id = p_id)
          ORDER BY 1) parts;
    SELECT table_name INTO t FROM datasets WHERE queue = 'rt' ORDER BY idx DESC LIMIT 1;
    EXECUTE format('INSERT INTO %I (partition, workspace_id, source_id, destination_id, user_id, payload)'
                   ' SELECT partition, workspace_id, source_id, destination_id, user_id, payload'
                   ' FROM dead_letters WHERE stage = ''router'' AND replayed_at IS NULL'
                   ' AND partition IS NOT NULL AND ($1 IS NULL OR destination_id = $1)'
                   ' AND ($2 IS NULL OR id = $2) ORDER BY id', t)
        USING p_destination, p_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE dead_letters SET replayed_at = now()
    WHERE stage = 'router' AND replayed_at IS NULL AND partition IS NOT NULL
      AND (p_destination IS NULL OR destination_id = p_destination)
      AND (p_id IS NULL OR id = p_id);
    RETURN n;
END $$;
