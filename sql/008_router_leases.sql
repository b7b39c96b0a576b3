-- The router with partition leases (DESIGN §4) reads rt_retries per leased
-- partition: the due scan walks, for each partition it holds, that
-- partition's heads in (next_retry_at, job_id) order, a page at a time; the
-- claim asks whether its partitions have any head at all. One index serves
-- both; the one over every partition (005) goes, so a flush maintains one
-- due index, not two.
CREATE INDEX rt_retries_part_due ON rt_retries (partition, next_retry_at, job_id) WHERE NOT parked;
DROP INDEX rt_retries_due;
