#include "gateway/writer.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/jobq.h"
#include "common/log.h"
#include "common/xalloc.h"

/* One request in a batch: its rows are rows[rows_off, rows_off+rows_len)
 * and its partitions parts[parts_off, parts_off+nevents). Waiters of a
 * batch are in arrival order. */
typedef struct Waiter {
    WriterDoneCb done;
    void *arg;
    size_t rows_off, rows_len;
    int parts_off, nevents;
    struct timeval arrived;
} Waiter;

typedef enum BatchState {
    BATCH_QUEUED,    /* waiting for a connection: a retry that is due, or a piece being isolated */
    BATCH_BACKOFF,   /* a failed write, queued again when its timer fires */
    BATCH_WRITING,   /* its transaction (or the dataset lookup before it) is on a connection */
    BATCH_VERIFYING, /* connection lost after the COPY data went out: asking pg_xact_status */
} BatchState;

typedef struct Batch {
    struct Batch *next; /* Writer.batches, oldest first */
    Writer *w;
    BatchState state;
    Buf rows;
    int *parts; /* one per event, in waiter order */
    int nparts, capparts;
    Waiter *waiters;
    int nwaiters, capwaiters;
    int nevents;
    int *locks; /* sorted unique partitions of the current write */
    Buf sql;
    DbCopy copy;
    bool isolating; /* a piece of a batch that failed for a data reason */
    bool busy;      /* an operation with this batch as its argument is on a connection */
    char xid[32];   /* transaction id of the current write; "" until known */
    char backend_pid[16];
    struct timeval started;      /* current write */
    struct timeval verify_since; /* first status check */
    struct event *timer;         /* backoff and status polling */
} Batch;

struct Writer {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    HintPub *hints;
    Batch pending;
    Batch *batches; /* every batch but the pending one */
    int nbatches;
    int max_inflight;
    int backlog_events;
    size_t backlog_bytes;
    struct event *wait_ev;
    bool wait_armed;
    struct event *stall_ev; /* answers requests that waited db_retry_ms without a write */
    char *table;            /* newest gw dataset; NULL until looked up */
    struct timeval table_at;
    bool draining;
    bool flushing, flush_again; /* try_flush does not recurse (callbacks may call it) */
    void (*idle_cb)(void *);
    void *idle_arg;
    void (*ready_cb)(void *);
    void *ready_arg;
    MetricSeries *m_commits, *m_events, *m_stage_in, *m_failures, *m_batch_events,
        *m_commit_seconds;
    MetricSeries *m_refused, *m_verified[3];
};

enum { VERIFY_COMMITTED, VERIFY_ABORTED, VERIFY_UNKNOWN };

static void try_flush(Writer *w);
static void start_write(Writer *w, Batch *b, DbConn *c);
static void verify_step(Writer *w, Batch *b);

static double elapsed_ms(const struct timeval *since, const struct timeval *now)
{
    return (double)(now->tv_sec - since->tv_sec) * 1000.0 +
           (double)(now->tv_usec - since->tv_usec) / 1000.0;
}

static double elapsed_s(const struct timeval *since)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return elapsed_ms(since, &now) / 1000.0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static Batch *batch_new(Writer *w)
{
    Batch *b = xcalloc(1, sizeof(*b));
    buf_init(&b->rows);
    buf_init(&b->sql);
    b->w = w;
    return b;
}

static void batch_init(Batch *b, Writer *w)
{
    memset(b, 0, sizeof(*b));
    buf_init(&b->rows);
    buf_init(&b->sql);
    b->w = w;
}

static void batch_deinit(Batch *b)
{
    buf_deinit(&b->rows);
    buf_deinit(&b->sql);
    free(b->parts);
    free(b->locks);
    free(b->waiters);
    if (b->timer)
        event_free(b->timer);
}

/* Appends a request's rows and partitions to b. */
static void batch_add(Batch *b, const char *rows, size_t rows_len, const int *parts, int n,
                      WriterDoneCb done, void *arg, const struct timeval *arrived)
{
    if (b->nwaiters == b->capwaiters) {
        b->capwaiters = b->capwaiters ? b->capwaiters * 2 : 16;
        b->waiters = xrealloc(b->waiters, sizeof(Waiter) * (size_t)b->capwaiters);
    }
    if (b->nparts + n > b->capparts) {
        b->capparts = (b->nparts + n) * 2;
        b->parts = xrealloc(b->parts, sizeof(int) * (size_t)b->capparts);
    }
    b->waiters[b->nwaiters++] = (Waiter){done, arg, b->rows.len, rows_len, b->nparts, n, *arrived};
    buf_append(&b->rows, rows, rows_len);
    memcpy(b->parts + b->nparts, parts, sizeof(int) * (size_t)n);
    b->nparts += n;
    b->nevents += n;
}

/* Answers waiter i of b; the backlog no longer counts it. */
static void answer(Writer *w, Batch *b, int i, int status, const char *msg)
{
    Waiter *wt = &b->waiters[i];
    w->backlog_events -= wt->nevents;
    w->backlog_bytes -= wt->rows_len;
    wt->done(wt->arg, status, msg);
}

static void answer_all(Writer *w, Batch *b, int status, const char *msg)
{
    for (int i = 0; i < b->nwaiters; i++)
        answer(w, b, i, status, msg);
    b->nwaiters = 0;
    b->nevents = 0;
    b->nparts = 0;
    buf_reset(&b->rows);
}

/* Removes the first k waiters (already answered) and their rows. */
static void drop_prefix(Batch *b, int k)
{
    if (k == 0)
        return;
    if (k == b->nwaiters) {
        b->nwaiters = b->nevents = b->nparts = 0;
        buf_reset(&b->rows);
        return;
    }
    size_t roff = b->waiters[k].rows_off;
    int poff = b->waiters[k].parts_off;
    memmove(b->rows.data, b->rows.data + roff, b->rows.len - roff);
    b->rows.len -= roff;
    b->rows.data[b->rows.len] = '\0';
    memmove(b->parts, b->parts + poff, sizeof(int) * (size_t)(b->nparts - poff));
    b->nparts -= poff;
    b->nevents -= poff;
    memmove(b->waiters, b->waiters + k, sizeof(Waiter) * (size_t)(b->nwaiters - k));
    b->nwaiters -= k;
    for (int i = 0; i < b->nwaiters; i++) {
        b->waiters[i].rows_off -= roff;
        b->waiters[i].parts_off -= poff;
    }
}

/* Answers 503 to the requests of b that have waited db_retry_ms (all of
 * them with all): nothing was written for them. Returns how many. */
static int expire(Writer *w, Batch *b, const struct timeval *now, bool all)
{
    int k = 0;
    while (k < b->nwaiters &&
           (all || elapsed_ms(&b->waiters[k].arrived, now) >= w->cfg->gateway.db_retry_ms))
        k++;
    for (int i = 0; i < k; i++)
        answer(w, b, i, 503, "database unavailable");
    drop_prefix(b, k);
    return k;
}

static void check_idle(Writer *w)
{
    if (w->draining && w->nbatches == 0 && w->pending.nevents == 0 && w->idle_cb) {
        void (*cb)(void *) = w->idle_cb;
        w->idle_cb = NULL;
        cb(w->idle_arg);
    }
}

static void list_add(Writer *w, Batch *b)
{
    Batch **pp = &w->batches;
    while (*pp)
        pp = &(*pp)->next;
    b->next = NULL;
    *pp = b;
    w->nbatches++;
}

/* Frees b (its waiters answered or moved elsewhere). */
static void release_batch(Writer *w, Batch *b)
{
    for (Batch **pp = &w->batches; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            w->nbatches--;
            break;
        }
    batch_deinit(b);
    free(b);
}

static void arm(Batch *b, int ms)
{
    if (b->timer == NULL)
        b->timer = evtimer_new(b->w->base, on_timer, b);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(b->timer, &tv);
}

static void committed(Writer *w, Batch *b)
{
    double secs = elapsed_s(&b->started);
    metrics_inc(w->m_commits, 1);
    metrics_inc(w->m_events, b->nevents);
    metrics_inc(w->m_stage_in, b->nevents);
    metrics_observe(w->m_commit_seconds, secs);
    metrics_observe(w->m_batch_events, (double)b->nevents / 1000.0);
    log_debug("batch_committed", "events=%d requests=%d seconds=%.4f", b->nevents, b->nwaiters,
              secs);
    answer_all(w, b, 200, "ok");
    release_batch(w, b);
    hint_pub_send(w->hints, "gw");
}

/* A write failed without storing anything: answer who waited too long,
 * write the rest again after a short backoff. */
static void retry_later(Writer *w, Batch *b, const char *why)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    /* while draining there is no time left to retry */
    int expired = expire(w, b, &now, w->draining);
    char q[1100];
    if (b->nwaiters == 0) {
        log_warn("batch_failed", "requests=%d error=%s", expired, log_quote(q, sizeof q, why));
        release_batch(w, b);
        return;
    }
    log_warn("batch_retry", "events=%d requests=%d expired=%d error=%s", b->nevents, b->nwaiters,
             expired, log_quote(q, sizeof q, why));
    b->state = BATCH_BACKOFF;
    arm(b, 100);
}

/* SQLSTATE of a failed statement as db.c reports it (" sqlstate=XXXXX"). */
static const char *sqlstate_of(const Err *err)
{
    const char *p = strstr(err->msg, " sqlstate=");
    if (p == NULL || strlen(p + 10) < 5)
        return NULL;
    return p + 10;
}

/* Errors caused by the data of some row (data exception, integrity
 * constraint, program limit such as a too large value): the transaction
 * failed at that statement, so it did not commit, and writing the same
 * rows again fails again. */
static bool is_data_error(const char *sqlstate)
{
    return sqlstate != NULL && (strncmp(sqlstate, "22", 2) == 0 ||
                                strncmp(sqlstate, "23", 2) == 0 || strncmp(sqlstate, "54", 2) == 0);
}

/* A copy of waiters [from, to) of b with their rows. */
static Batch *piece(Writer *w, const Batch *b, int from, int to)
{
    Batch *p = batch_new(w);
    for (int i = from; i < to; i++) {
        const Waiter *wt = &b->waiters[i];
        batch_add(p, b->rows.data + wt->rows_off, wt->rows_len, b->parts + wt->parts_off,
                  wt->nevents, wt->done, wt->arg, &wt->arrived);
    }
    p->isolating = true;
    p->state = BATCH_QUEUED;
    return p;
}

/* The database refused some row of b: find whose. */
static void isolate(Writer *w, Batch *b, const Err *err)
{
    char q[1100];
    if (b->nwaiters == 1) {
        log_warn("request_refused_by_database", "events=%d error=%s", b->nevents,
                 log_quote(q, sizeof q, err->msg));
        metrics_inc(w->m_refused, 1);
        answer_all(w, b, 400, WRITER_MSG_REFUSED);
        release_batch(w, b);
        return;
    }
    if (!b->isolating)
        log_warn("batch_isolating", "events=%d requests=%d error=%s", b->nevents, b->nwaiters,
                 log_quote(q, sizeof q, err->msg));
    int half = b->nwaiters / 2;
    Batch *lo = piece(w, b, 0, half);
    Batch *hi = piece(w, b, half, b->nwaiters);
    release_batch(w, b); /* its waiters live on in the pieces */
    list_add(w, lo);
    list_add(w, hi);
}

static void on_written(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Batch *b = arg;
    Writer *w = b->w;
    b->busy = false;
    /* The only row-returning statement of a write is the lock statement,
     * which also returns the transaction id; it arrives before the COPY
     * data is sent, so without it nothing can have been committed. */
    if (res != NULL && PQntuples(res) == 1 && PQnfields(res) == 3) {
        snprintf(b->xid, sizeof b->xid, "%s", PQgetvalue(res, 0, 1));
        snprintf(b->backend_pid, sizeof b->backend_pid, "%s", PQgetvalue(res, 0, 2));
    }
    if (b->nwaiters == 0) { /* aborted at shutdown while writing */
        release_batch(w, b);
    } else if (err == NULL) {
        committed(w, b);
    } else {
        metrics_inc(w->m_failures, 1);
        /* The cached dataset may have been dropped under us (maintenance
         * drops a consumed dataset once a newer one exists): look it up again. */
        free(w->table);
        w->table = NULL;
        const char *st = sqlstate_of(err);
        if (is_data_error(st)) {
            isolate(w, b, err);
        } else if (b->xid[0] != '\0') {
            char q[1100];
            log_warn("commit_outcome_unknown", "events=%d requests=%d xid=%s error=%s", b->nevents,
                     b->nwaiters, b->xid, log_quote(q, sizeof q, err->msg));
            b->state = BATCH_VERIFYING;
            gettimeofday(&b->verify_since, NULL);
            verify_step(w, b);
        } else {
            retry_later(w, b, err->msg);
        }
    }
    try_flush(w);
    check_idle(w);
}

static void on_table(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Batch *b = arg;
    Writer *w = b->w;
    b->busy = false;
    if (err == NULL && (res == NULL || PQntuples(res) != 1)) {
        Err e;
        err_set(&e, ERR_DB, "no dataset for queue gw (run `pintlectl migrate`)");
        on_written(b, c, NULL, &e);
        return;
    }
    if (err != NULL || b->nwaiters == 0) {
        on_written(b, c, NULL, err);
        return;
    }
    free(w->table);
    w->table = xstrdup(PQgetvalue(res, 0, 0));
    gettimeofday(&w->table_at, NULL);
    start_write(w, b, c);
}

/* BEGIN; lock the partitions (ascending, so writers cannot deadlock) and
 * take the transaction id and backend pid; COPY; COMMIT. */
static void format_write(Batch *b, const char *table)
{
    b->locks = xrealloc(b->locks, sizeof(int) * (size_t)(b->nparts ? b->nparts : 1));
    memcpy(b->locks, b->parts, sizeof(int) * (size_t)b->nparts);
    int n = jobq_sort_partitions(b->locks, b->nparts);
    buf_reset(&b->sql);
    jobq_format_write(&b->sql, JOBQ_GW, table, b->locks, n, true, true);
    buf_puts(&b->sql, "COMMIT");
}

static void start_write(Writer *w, Batch *b, DbConn *c)
{
    b->state = BATCH_WRITING;
    b->xid[0] = '\0';
    b->backend_pid[0] = '\0';
    /* The newest dataset changes when maintenance rotates it; writing into
     * the previous one is still correct (readers read every dataset), so
     * the name is only refreshed every few seconds or after an error. */
    if (w->table == NULL || elapsed_s(&w->table_at) > 5.0) {
        static const char *const params[1] = {"gw"};
        b->busy = true;
        if (db_exec(c, JOBQ_SQL_NEWEST_DATASET, 1, params, NULL, 0, on_table, b) < 0) {
            b->busy = false;
            Err e;
            err_set(&e, ERR_DB, "could not send dataset lookup");
            on_written(b, c, NULL, &e);
        }
        return;
    }
    format_write(b, w->table);
    b->copy.data = b->rows.data;
    b->copy.len = b->rows.len;
    gettimeofday(&b->started, NULL);
    b->busy = true;
    if (db_exec(c, b->sql.data, -1, NULL, &b->copy, 1, on_written, b) < 0) {
        b->busy = false;
        Err e;
        err_set(&e, ERR_DB, "could not send batch");
        on_written(b, c, NULL, &e);
    }
}

static void verify_done(Writer *w, Batch *b, int outcome)
{
    metrics_inc(w->m_verified[outcome], 1);
    if (outcome == VERIFY_COMMITTED) {
        log_info("commit_verified", "outcome=committed events=%d requests=%d xid=%s", b->nevents,
                 b->nwaiters, b->xid);
        committed(w, b);
    } else if (outcome == VERIFY_ABORTED) {
        log_info("commit_verified", "outcome=aborted events=%d requests=%d xid=%s", b->nevents,
                 b->nwaiters, b->xid);
        b->xid[0] = '\0';
        b->state = BATCH_QUEUED; /* known not stored: write it again now */
    } else {
        log_warn("commit_unverified", "events=%d requests=%d xid=%s waited_ms=%d", b->nevents,
                 b->nwaiters, b->xid, w->cfg->gateway.commit_verify_ms);
        answer_all(w, b, 503, "database unavailable");
        release_batch(w, b);
    }
    try_flush(w);
    check_idle(w);
}

static void on_status(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Batch *b = arg;
    Writer *w = b->w;
    b->busy = false;
    if (b->nwaiters == 0) {
        release_batch(w, b);
        check_idle(w);
        return;
    }
    const char *st = err == NULL && res != NULL && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)
                         ? PQgetvalue(res, 0, 0)
                         : NULL;
    if (st != NULL && strcmp(st, "committed") == 0) {
        verify_done(w, b, VERIFY_COMMITTED);
    } else if (st != NULL && strcmp(st, "aborted") == 0) {
        verify_done(w, b, VERIFY_ABORTED);
    } else if (elapsed_s(&b->verify_since) * 1000.0 >= w->cfg->gateway.commit_verify_ms) {
        verify_done(w, b, VERIFY_UNKNOWN);
    } else {
        if (err != NULL) {
            char q[1100];
            log_debug("commit_check_failed", "xid=%s error=%s", b->xid,
                      log_quote(q, sizeof q, err->msg));
        }
        /* in progress (its backend was just told to terminate), or no
         * answer: ask again shortly */
        arm(b, st != NULL ? 20 : 100);
    }
}

/* Asks another connection what became of b's transaction. A transaction
 * still in progress belongs to a backend that has not noticed the lost
 * connection yet (it may be waiting for COPY data that will never come):
 * terminating it makes the outcome final, so the answer is never a guess. */
static void verify_step(Writer *w, Batch *b)
{
    DbConn *c = db_pool_acquire(w->pool);
    if (c == NULL) {
        if (elapsed_s(&b->verify_since) * 1000.0 >= w->cfg->gateway.commit_verify_ms) {
            verify_done(w, b, VERIFY_UNKNOWN);
            return;
        }
        arm(b, 100);
        return;
    }
    static const char sql[] =
        "SELECT s, CASE WHEN s = 'in progress' THEN (SELECT pg_terminate_backend(a.pid)"
        " FROM pg_stat_activity a WHERE a.pid = $2::int"
        " AND a.backend_xid::text = ($1::text::numeric % 4294967296)::text) END"
        " FROM pg_xact_status($1::text::xid8) AS s";
    const char *params[2] = {b->xid, b->backend_pid};
    b->busy = true;
    if (db_exec(c, sql, 2, params, NULL, 0, on_status, b) < 0) {
        b->busy = false;
        arm(b, 100);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    Batch *b = arg;
    Writer *w = b->w;
    if (b->state == BATCH_VERIFYING) {
        verify_step(w, b);
        return;
    }
    if (b->state == BATCH_BACKOFF)
        b->state = BATCH_QUEUED;
    try_flush(w);
}

static void flush_pending(Writer *w, DbConn *c)
{
    Batch *b = xmalloc(sizeof(*b));
    *b = w->pending;
    batch_init(&w->pending, w);
    list_add(w, b);
    start_write(w, b, c);
}

static void flush_once(Writer *w);

static void try_flush(Writer *w)
{
    if (w->flushing) {
        w->flush_again = true;
        return;
    }
    w->flushing = true;
    do {
        w->flush_again = false;
        flush_once(w);
    } while (w->flush_again);
    w->flushing = false;
}

static void flush_once(Writer *w)
{
    /* Retries and isolation pieces first: their requests waited longest. */
    for (Batch *b = w->batches; b != NULL;) {
        Batch *next = b->next;
        if (b->state == BATCH_QUEUED) {
            DbConn *c = db_pool_acquire(w->pool);
            if (c == NULL)
                return;
            start_write(w, b, c);
        }
        b = next;
    }
    while (w->pending.nevents > 0 && w->nbatches < w->max_inflight) {
        bool full = w->pending.nevents >= w->cfg->gateway.batch_max_events || w->draining;
        if (w->nbatches > 0 && !full) {
            /* Give the batch batch_max_wait_ms to grow before another write starts. */
            if (!w->wait_armed) {
                int ms = w->cfg->gateway.batch_max_wait_ms;
                struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
                evtimer_add(w->wait_ev, &tv);
                w->wait_armed = true;
            }
            return;
        }
        DbConn *c = db_pool_acquire(w->pool);
        if (c == NULL)
            return;
        if (w->wait_armed) {
            evtimer_del(w->wait_ev);
            w->wait_armed = false;
        }
        flush_pending(w, c);
    }
}

static void on_wait(evutil_socket_t fd, short what, void *arg)
{
    Writer *w = arg;
    w->wait_armed = false;
    /* the wait is over: flush now even though another batch is in flight */
    w->flushing = true;
    while (w->pending.nevents > 0 && w->nbatches < w->max_inflight) {
        DbConn *c = db_pool_acquire(w->pool);
        if (c == NULL)
            break;
        flush_pending(w, c);
    }
    w->flushing = false;
    if (w->flush_again)
        try_flush(w);
}

static void on_idle(void *arg)
{
    Writer *w = arg;
    if (w->ready_cb != NULL && db_pool_connected(w->pool) > 0) {
        void (*cb)(void *) = w->ready_cb;
        w->ready_cb = NULL;
        cb(w->ready_arg);
    }
    try_flush(w);
}

/* Requests must not wait without bound for a connection: those that have
 * waited db_retry_ms in the pending batch, or in a batch waiting to be
 * written again, are answered 503 (nothing was written for them). */
static void on_stall_check(evutil_socket_t fd, short what, void *arg)
{
    Writer *w = arg;
    if (w->pending.nevents == 0 && w->nbatches == 0)
        return;
    struct timeval now;
    gettimeofday(&now, NULL);
    int n = expire(w, &w->pending, &now, false);
    if (n > 0)
        log_warn("pending_expired", "requests=%d connected=%d", n, db_pool_connected(w->pool));
    for (Batch *b = w->batches; b != NULL;) {
        Batch *next = b->next;
        if ((b->state == BATCH_QUEUED || b->state == BATCH_BACKOFF) &&
            expire(w, b, &now, false) > 0 && b->nwaiters == 0)
            release_batch(w, b);
        b = next;
    }
    check_idle(w);
}

Writer *writer_create(struct event_base *base, const Config *cfg, DbPool *pool, HintPub *hints,
                      Metrics *m)
{
    Writer *w = xcalloc(1, sizeof(*w));
    w->base = base;
    w->cfg = cfg;
    w->pool = pool;
    w->hints = hints;
    w->max_inflight = cfg->gateway.max_inflight_batches;
    batch_init(&w->pending, w);
    w->wait_ev = evtimer_new(base, on_wait, w);
    w->stall_ev = event_new(base, -1, EV_PERSIST, on_stall_check, w);
    struct timeval every = {0, 100 * 1000};
    event_add(w->stall_ev, &every);
    db_pool_set_idle_cb(pool, on_idle, w);
    w->m_commits = metrics_series(m, "pintle_gateway_batches_committed_total",
                                  "Group-commit transactions committed", METRIC_COUNTER, "");
    w->m_events = metrics_series(m, "pintle_gateway_events_stored_total",
                                 "Events committed to the gw queue", METRIC_COUNTER, "");
    w->m_stage_in = metrics_series(m, "pintle_stage_in_total", METRICS_STAGE_IN_HELP,
                                   METRIC_COUNTER, "stage=\"processor\",destination=\"\"");
    w->m_failures = metrics_series(m, "pintle_gateway_batch_write_failures_total",
                                   "Batch writes that failed (retried, isolated or answered 503)",
                                   METRIC_COUNTER, "");
    w->m_refused = metrics_series(m, "pintle_gateway_requests_refused_by_database_total",
                                  "Requests answered 400 because the database refused their rows",
                                  METRIC_COUNTER, "");
    static const char *const outcomes[3] = {"committed", "aborted", "unknown"};
    for (int i = 0; i < 3; i++) {
        char labels[40];
        snprintf(labels, sizeof labels, "outcome=\"%s\"", outcomes[i]);
        w->m_verified[i] =
            metrics_series(m, "pintle_gateway_commit_checks_total",
                           "Batches whose COMMIT was interrupted, by what pg_xact_status said",
                           METRIC_COUNTER, labels);
    }
    w->m_commit_seconds =
        metrics_series(m, "pintle_gateway_commit_duration_seconds",
                       "Time from sending a batch to its COMMIT", METRIC_HISTOGRAM, "");
    w->m_batch_events = metrics_series(
        m, "pintle_gateway_batch_size_kilo_events",
        "Events per committed batch, in thousands (histogram buckets reuse the seconds scale)",
        METRIC_HISTOGRAM, "");
    return w;
}

void writer_destroy(Writer *w)
{
    if (w == NULL)
        return;
    writer_abort(w);
    while (w->batches != NULL)
        release_batch(w, w->batches);
    batch_deinit(&w->pending);
    event_free(w->wait_ev);
    event_free(w->stall_ev);
    free(w->table);
    free(w);
}

int writer_submit(Writer *w, IngestOut *in, WriterDoneCb done, void *arg, const char **why)
{
    const GatewayConfig *g = &w->cfg->gateway;
    if (w->draining) {
        *why = "shutting down";
        return 503;
    }
    if (in->nevents > g->max_backlog_events || in->rows.len > (size_t)g->max_backlog_bytes) {
        /* It could never be stored: 503 would make the client retry forever. */
        *why = "request size exceeds max limit";
        return 413;
    }
    if (w->backlog_events + in->nevents > g->max_backlog_events ||
        w->backlog_bytes + in->rows.len > (size_t)g->max_backlog_bytes) {
        *why = "server busy";
        return 503;
    }
    struct timeval now;
    gettimeofday(&now, NULL);
    batch_add(&w->pending, in->rows.data, in->rows.len, in->parts, in->nevents, done, arg, &now);
    w->backlog_events += in->nevents;
    w->backlog_bytes += in->rows.len;
    try_flush(w);
    return 0;
}

int writer_backlog(const Writer *w)
{
    return w->backlog_events;
}

void writer_on_ready(Writer *w, void (*cb)(void *), void *arg)
{
    w->ready_cb = cb;
    w->ready_arg = arg;
    if (db_pool_connected(w->pool) > 0)
        on_idle(w);
}

void writer_drain(Writer *w, void (*idle_cb)(void *), void *arg)
{
    w->draining = true;
    w->idle_cb = idle_cb;
    w->idle_arg = arg;
    try_flush(w);
    check_idle(w);
}

void writer_abort(Writer *w)
{
    answer_all(w, &w->pending, 503, "shutting down");
    for (Batch *b = w->batches; b != NULL;) {
        Batch *next = b->next;
        /* A batch whose COMMIT may be on the wire gets 503: the client
         * retries, so the event is stored at least once, never lost. */
        answer_all(w, b, 503, "shutting down");
        if (!b->busy) /* else its callback frees it */
            release_batch(w, b);
        b = next;
    }
}

bool writer_db_ready(const Writer *w)
{
    return db_pool_connected(w->pool) > 0;
}
