-- Processor dead letters become replayable. replay_dead_letters re-queues:
--  - the router's dead letters (aborted deliveries) as new rt jobs, as before;
--  - the processor's (transformer rejections, user transformations not run,
--    unknown sources, ...) as new gw jobs whose destination_id is the dead
--    letter's destination, which the processor routes to that destination
--    only (no other destination receives the event again). A dead letter of
--    a whole job (destination_id '') is routed to every destination again.
-- Each job keeps its partition, so it queues behind whatever its user has
-- pending now. The dead letters are locked first (FOR UPDATE: a concurrent
-- replay waits, then skips what this one marked replayed); the partitions
-- are locked in ascending (queue, partition) order, gw before rt, before
-- any job id is taken, as every writer does. Returns the jobs re-queued.
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
          WHERE stage IN ('processor', 'router') AND replayed_at IS NULL
            AND partition IS NOT NULL
            AND (p_destination IS NULL OR destination_id = p_destination)
            AND (p_id IS NULL OR id = p_id)
          ORDER BY id
          FOR UPDATE) d;
    IF cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(q, p)
    FROM (SELECT DISTINCT CASE stage WHEN 'processor' THEN 1 ELSE 2 END AS q, partition AS p
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
    UPDATE dead_letters SET replayed_at = now() WHERE id = ANY (ids);
    RETURN n;
END $$;
