-- The router keeps parked and retrying work in rt_retries rather than in
-- memory (router/order.c). Each (destination, user) with rows has exactly
-- one head: its smallest job id, parked = false, due at next_retry_at; the
-- rest are parked behind it. The router finds due heads by next_retry_at,
-- a page at a time, and loads a user's parked rows by job id
-- (rt_retries_user) once its head is done.
CREATE INDEX rt_retries_due ON rt_retries (next_retry_at, job_id) WHERE NOT parked;

-- Rows an older router wrote: make each user's smallest row its head (due
-- now if it had no retry time) and every later row parked.
UPDATE rt_retries r
SET parked = (r.job_id <> h.first),
    next_retry_at = CASE WHEN r.job_id = h.first THEN coalesce(r.next_retry_at, now())
                         ELSE r.next_retry_at END
FROM (SELECT destination_id, user_id, min(job_id) AS first FROM rt_retries GROUP BY 1, 2) h
WHERE r.destination_id = h.destination_id AND r.user_id = h.user_id
  AND (r.parked <> (r.job_id <> h.first) OR (r.job_id = h.first AND r.next_retry_at IS NULL));
