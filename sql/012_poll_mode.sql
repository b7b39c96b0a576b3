-- The operations poll in one call: the automatic degraded trigger, then the
-- mode, its reason and the paused destinations as they are after it. (One
-- SELECT calling check_restarts next to a subquery on ops_mode read the
-- reason from the statement's snapshot, before the trigger wrote it: the
-- first poll that degraded the pipeline saw mode 'degraded' with reason ''.)
CREATE FUNCTION poll_mode(p_limit int, p_window_s int, p_grace_ms int)
RETURNS TABLE (mode text, reason text, paused text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM check_restarts(p_limit, p_window_s, p_grace_ms);
    RETURN QUERY
        SELECT m.mode, m.reason,
               (SELECT coalesce(string_agg(p.destination_id, E'\n' ORDER BY p.destination_id), '')
                FROM paused_destinations p)
        FROM ops_mode m;
END $$;
