-- Consumers' compare-and-set cursor check, and the router's retry table.

-- Raises when fewer cursors moved than expected: another consumer advanced
-- one first, so this transaction's outputs must not be kept.
CREATE FUNCTION check_cursors(moved int, expected int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF moved <> expected THEN
        RAISE EXCEPTION 'cursor moved by another consumer (% of % partitions advanced)', moved, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
END $$;

-- Per-job state only where deliveries fail (DESIGN §3). A failed job has a
-- row with parked = false; later jobs of the same user for the same
-- destination wait behind it in order with parked = true. Rows carry their
-- payload, so the rt dataset they came from can be dropped.
CREATE TABLE rt_retries (
    job_id          bigint      PRIMARY KEY,
    partition       int         NOT NULL,
    workspace_id    text        NOT NULL,
    source_id       text        NOT NULL,
    destination_id  text        NOT NULL,
    user_id         text        NOT NULL,
    payload         text        NOT NULL,
    parked          boolean     NOT NULL,
    attempts        int         NOT NULL DEFAULT 0,
    first_failed_at timestamptz,
    next_retry_at   timestamptz,
    last_status     int,
    last_error      text
);
CREATE INDEX rt_retries_user ON rt_retries (destination_id, user_id, job_id);
