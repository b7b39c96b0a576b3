-- replay_dead_letters for every stage that writes dead letters: the
-- processor's and the user transformation's (stage 'user_transformation':
-- the /customTransform call failed the event) go back as gw jobs for their
-- one destination, which runs its user transformation again; the router's
-- as rt jobs; the batchrouter's as batch_rt jobs of their partition.
-- Advisory locks in the order gw (1), rt (2), batch_rt (3). Supersedes
-- 009_batchrouter's version (which did not know user_transformation).
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
          WHERE stage IN ('processor', 'user_transformation', 'router', 'batchrouter') AND replayed_at IS NULL
            AND partition IS NOT NULL
            AND (p_destination IS NULL OR destination_id = p_destination)
            AND (p_id IS NULL OR id = p_id)
          ORDER BY id
          FOR UPDATE) d;
    IF cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(q, p)
    FROM (SELECT DISTINCT CASE stage WHEN 'router' THEN 2 WHEN 'batchrouter' THEN 3 ELSE 1 END AS q,
                 partition AS p
          FROM dead_letters WHERE id = ANY (ids)
          ORDER BY 1, 2) parts;
    SELECT table_name INTO t FROM datasets WHERE queue = 'gw' ORDER BY idx DESC LIMIT 1;
    EXECUTE format('INSERT INTO %I (partition, workspace_id, source_id, destination_id, user_id, payload)'
                   ' SELECT partition, workspace_id, source_id, destination_id, user_id, payload'
                   ' FROM dead_letters WHERE id = ANY ($1)'
                   ' AND stage IN (''processor'', ''user_transformation'') ORDER BY id', t)
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
