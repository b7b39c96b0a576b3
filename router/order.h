/* The router's per-user ordering and parking: a state machine with no I/O.
 * Owns every rt job held in memory, the per-(destination, user) queues, the
 * per-destination ready lists and the per-partition lists the cursors are
 * computed from. It decides what is delivered next, what must be written to
 * rt_retries or dead_letters at the next flush, how far each cursor may move,
 * and which users' parked rows must be loaded back; the engine (engine.c)
 * does the SQL and the HTTP and reports results here. State is owned per
 * partition (a user's jobs are all in one partition): the engine opens the
 * partitions it leases, pauses those it gives back and drops those it lost.
 * Unit-tested. */
#ifndef ROUTER_ORDER_H
#define ROUTER_ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Order Order;
typedef struct OrderUser OrderUser;

typedef enum OrderFate {
    ORDER_PENDING, /* not delivered yet */
    ORDER_DONE,    /* delivered (2xx) */
    ORDER_DEAD     /* aborted: a dead letter */
} OrderFate;

/* One rt job. The identity strings live in the same allocation; the state
 * fields are read by the engine (to deliver) and by the flush SQL (to write
 * rows), and changed only by this module. */
typedef struct OrderJob {
    int64_t job_id;
    int partition;
    const char *workspace_id, *source_id, *dest_id, *user_id, *payload;
    OrderFate fate;
    bool row;    /* has, or gets at the next flush, a row in rt_retries */
    bool parked; /* that row waits behind an earlier job of its user */
    int attempts;
    int64_t first_failed_ms, next_retry_ms; /* 0: not set */
    int last_status;
    char *last_error; /* valid UTF-8, or NULL */
    char *response;   /* dead letters: the destination's answer, valid UTF-8, or NULL */

    /* private to order.c */
    struct OrderJob *prev_all, *next_all; /* every job in memory */
    struct OrderJob *next_win;            /* the user's window */
    struct OrderJob *next_part;           /* the partition list */
    OrderUser *user;                      /* set while in a window */
    struct OrderDest *dest;
    int64_t claimed_ms;
    int flush_gen; /* the flush that last wrote it, until that flush ends */
    bool in_win, in_part, dirty, durable, inflight, held, writing;
    bool orphan; /* in flight when its partition was dropped: freed when it returns */
} OrderJob;

typedef struct OrderLimits {
    int max_jobs;              /* jobs in memory before the engine stops claiming */
    int max_inflight_per_dest; /* deliveries in flight per destination */
    int max_held_per_dest;     /* undelivered jobs in memory per destination */
    int64_t spill_after_ms;    /* a job blocking its partition's cursor this long is parked */
} OrderLimits;

/* Result of order_flush_begin: what one flush transaction writes. */
typedef struct OrderFlush {
    OrderJob **jobs; /* rows to upsert (fate pending), delete (done) or dead-letter (dead) */
    int njobs;
    int *parts; /* cursors to advance from old to new */
    int64_t *old_ids, *new_ids;
    int nparts;
    int *touched; /* every partition the flush writes to, ascending (for the fence) */
    int ntouched;
    int gen;
} OrderFlush;

/* Creates an empty state for partitions 0..nparts-1, none of them open.
 * Never fails. */
Order *order_create(const OrderLimits *lim, int nparts);
/* Frees every job, user and destination. NULL is a no-op. No delivery may
 * be in flight. */
void order_destroy(Order *o);

/* Drops every job and user and closes every partition (after a database
 * error: the engine starts over from the database), including those a
 * flush in progress refers to (that flush's OrderFlush must not be used
 * again). No delivery may be in flight. */
void order_reset(Order *o);

/* Opens partition p (closed) with its stored cursor: claims, due rows and
 * deliveries of it are taken from now on. */
void order_add_partition(Order *o, int p, int64_t cursor);
/* Drops everything of partition p at once (its lease is lost): jobs, users,
 * pending writes, its part of a flush in progress (order_flush_done skips
 * it) and of a load in flight (order_push_loaded drops it). Deliveries in
 * flight stay counted against their destination until they return, and
 * their outcome is not recorded (order_job_dropped). p is closed. */
void order_drop_partition(Order *o, int p);
/* Paused: partition p takes no new work (no claimed or due jobs, no loads,
 * no deliveries started), while deliveries in flight return and its writes
 * are flushed (its lease is being given back or could not be renewed).
 * Unpaused: work goes on. */
void order_pause_partition(Order *o, int p, bool paused, int64_t now_ms);
bool order_partition_open(const Order *o, int p);
/* Deliveries in flight of partition p. */
int order_partition_inflight(const Order *o, int p);
/* Partition p has nothing in progress: no delivery in flight, nothing to
 * write or being written, and its cursor passed every job claimed. */
bool order_partition_idle(const Order *o, int p);
/* The last job id claimed per open, unpaused partition: the next claim
 * reads beyond them. Returns how many (parts and cursors need room for P). */
int order_claim_cursors(const Order *o, int *parts, int64_t *cursors);

/* What rt_retries held for a claimed job when it was claimed. */
typedef enum OrderRows {
    ORDER_ROWS_NONE, /* no row of its (destination, user) */
    ORDER_ROWS_USER, /* rows of its user before it: it goes behind them */
    ORDER_ROWS_OWN   /* its own row, or only later rows of its user: an earlier
                      * term wrote its row, or resolved it, and its cursor did
                      * not move past it before that term ended */
} OrderRows;

/* A job claimed from rt_jobs, in job order within its partition; rows as
 * the claim saw them (memory overrides ORDER_ROWS_USER for users it holds).
 * Takes ownership of j (from order_job_create). Parks the job when its user
 * has rows, and spills its user when the destination holds too much. A job
 * with its own row is only counted for the cursor: the row stands for it.
 * Returns false and frees j when its partition is not open or is paused
 * (the claim was sent before: its cursor does not move). */
bool order_push_claimed(Order *o, OrderJob *j, OrderRows rows, int64_t now_ms);
/* A due scan is sent / its rows were all pushed. Between the two, users
 * whose last rows are delivered stay in memory, so that rows the scan read
 * before their deletes were written are not delivered again. */
void order_due_begin(Order *o);
void order_due_end(Order *o, int64_t now_ms);
/* A head row due for retry, from a due scan (row and parked unset, attempts
 * and times as stored). Takes ownership; returns false and frees j when the
 * user is in memory (memory knows better), its destination is full, or its
 * partition is not open or paused. */
bool order_push_due(Order *o, OrderJob *j, int64_t now_ms);

/* Users with no rows left in memory while rt_retries holds more of them:
 * moves up to max of them into users[] and marks them loading, while their
 * destination's jobs in memory and the pages already asked for (page rows
 * each) stay under max_held_per_dest, or the destination has nothing else
 * to deliver (then one at a time).
 * after[i]: load rows with job_id > after[i]. The engine must load them
 * with nothing left to flush, so that the rows it reads are complete. */
int order_take_loads(Order *o, OrderUser **users, int64_t *after, int max, int page);
/* True when some user waits for its next rows to be loaded. */
bool order_loads_wanted(const Order *o);
const char *order_user_dest(const OrderUser *u);
const char *order_user_id(const OrderUser *u);
int order_user_partition(const OrderUser *u);
/* The rows loaded for u (job order, at most the page asked for; full: the
 * page was full, so more may follow). Takes ownership of the jobs. When u's
 * partition was dropped meanwhile, the jobs and u are freed. */
void order_push_loaded(Order *o, OrderUser *u, OrderJob **jobs, int n, bool full, int64_t now_ms);

/* Next job to deliver, round-robin over destinations within their in-flight
 * limit; marks it in flight. NULL when none is ready. */
OrderJob *order_take_ready(Order *o, int64_t now_ms);
/* Outcome of a delivery taken with order_take_ready. */
void order_ok(Order *o, OrderJob *j, int64_t now_ms);
/* Failed; try again at next_retry_ms. Parks the user's later jobs. error is
 * copied, cut and escaped into valid UTF-8. */
void order_retry(Order *o, OrderJob *j, int status, const char *error, int64_t next_retry_ms,
                 int64_t now_ms);
/* Given up: a dead letter with the reason and the answer (copied, cut and
 * escaped into valid UTF-8, at most 4,096 input bytes each, so
 * at most 16 KiB stored once invalid bytes are written as \xHH). */
void order_abort(Order *o, OrderJob *j, int status, const char *reason, const char *response,
                 size_t response_len, int64_t now_ms);
/* The attempt ended without an outcome (cancelled at shutdown, or state is
 * being dropped): nothing is recorded, the job stays as it was. Any outcome
 * of a job whose partition was dropped is taken like this one, and frees it. */
void order_lost(Order *o, OrderJob *j, int64_t now_ms);
/* The job's partition was dropped while it was in flight: its outcome must
 * not be recorded or reported as one (hand it to order_lost). */
bool order_job_dropped(const OrderJob *j);
/* Deliveries of partition p in flight since it was dropped (orphans). It
 * must not be opened again before they returned: the same job would be
 * delivered twice at once, and an orphan could land after a later job of
 * its user delivered again. order_orphans: every partition's. */
int order_partition_orphans(const Order *o, int p);
int order_orphans(const Order *o);
/* Counts the attempt and the first failure time, without deciding. */
void order_note_failure(OrderJob *j, int64_t now_ms);

/* Parks the users of jobs that kept a partition's cursor waiting for longer
 * than spill_after_ms (a destination that does not answer, or one far
 * behind), so that cursor can pass them; returns the number of users. */
int order_spill_blockers(Order *o, int64_t now_ms);
/* At shutdown, with no delivery in flight: parks the users of every claimed
 * job the cursors cannot pass yet, so the final flush moves each cursor past
 * everything claimed and no job already delivered is delivered again after
 * a restart. Returns the number of users. */
int order_spill_all(Order *o, int64_t now_ms);
/* The same for partition p alone (given back), with none of its deliveries
 * in flight. */
int order_spill_partition(Order *o, int p, int64_t now_ms);

/* True when a flush would write something or move a cursor. */
bool order_flush_needed(const Order *o);
/* True when jobs wait to be written. */
bool order_has_writes(const Order *o);
/* Starts a flush: f gets the writes and cursor moves (f's arrays are owned
 * by o, valid until the next order_flush_begin or order_destroy). One flush
 * at a time. */
void order_flush_begin(Order *o, OrderFlush *f);
/* The flush committed: cursors and jobs become durable; jobs and users that
 * are no longer needed leave memory. */
void order_flush_done(Order *o, OrderFlush *f, int64_t now_ms);

/* Destinations holding as many undelivered jobs as they may: up to max ids
 * (borrowed, valid until the next change) into ids[]. */
int order_full_dests(const Order *o, const char **ids, int max);
/* Counters since order_create. */
typedef struct OrderStats {
    unsigned long long parked;         /* jobs written behind an earlier row of their user */
    unsigned long long spilled_budget; /* users moved to rt_retries: destination over budget */
    unsigned long long spilled_cursor; /* users moved to rt_retries: a cursor waited too long */
} OrderStats;
const OrderStats *order_stats(const Order *o);
int order_partitions(const Order *o); /* P */
int order_jobs(const Order *o);       /* jobs in memory */
int order_inflight(const Order *o);   /* deliveries in flight */
int order_users(const Order *o);      /* users in memory */

/* A job in one allocation with copies of its strings; caller gives it to an
 * order_push_* function or frees it with order_job_free. */
OrderJob *order_job_create(int64_t job_id, int partition, const char *workspace_id,
                           const char *source_id, const char *dest_id, const char *user_id,
                           const char *payload, size_t payload_len);
void order_job_free(OrderJob *j);

#endif
