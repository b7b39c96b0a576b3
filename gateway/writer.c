#include "gateway/writer.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/jobq.h"
#include "common/log.h"
#include "common/xalloc.h"

typedef struct Waiter {
    WriterDoneCb done;
    void *arg;
} Waiter;

typedef struct Batch {
    Buf rows;
    int *parts;
    int nparts, capparts;
    Waiter *waiters;
    int nwaiters, capwaiters;
    int nevents;
    Buf sql;
    DbCopy copy;
    bool writing;
    bool refreshing; /* looking up the newest dataset before writing */
    struct timeval started;
    struct timeval first_try;
    Writer *w;
    struct event *retry_ev;
} Batch;

struct Writer {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    HintPub *hints;
    Batch pending;
    Batch **inflight; /* slots, max_inflight_batches */
    int max_inflight;
    int ninflight;
    int backlog_events;
    struct event *wait_ev;
    bool wait_armed;
    struct event *stall_ev; /* fails pending requests that cannot be written in time */
    char *table; /* newest gw dataset; NULL until looked up */
    struct timeval table_at;
    bool draining;
    void (*idle_cb)(void *);
    void *idle_arg;
    MetricSeries *m_commits, *m_events, *m_failures, *m_batch_events, *m_commit_seconds;
};

static void try_flush(Writer *w);

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
    free(b->waiters);
    if (b->retry_ev)
        event_free(b->retry_ev);
}

static void finish_waiters(Batch *b, int status, const char *msg)
{
    for (int i = 0; i < b->nwaiters; i++)
        b->waiters[i].done(b->waiters[i].arg, status, msg);
    b->nwaiters = 0;
}

static double elapsed_s(const struct timeval *since)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_usec - since->tv_usec) / 1e6;
}

static void check_idle(Writer *w)
{
    if (w->draining && w->ninflight == 0 && w->pending.nevents == 0 && w->idle_cb) {
        void (*cb)(void *) = w->idle_cb;
        w->idle_cb = NULL;
        cb(w->idle_arg);
    }
}

static void release_batch(Writer *w, Batch *b)
{
    for (int i = 0; i < w->max_inflight; i++)
        if (w->inflight[i] == b) {
            w->inflight[i] = NULL;
            w->ninflight--;
        }
    w->backlog_events -= b->nevents;
    batch_deinit(b);
    free(b);
}

static void start_write(Writer *w, Batch *b, DbConn *c);

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    Batch *b = arg;
    Writer *w = b->w;
    DbConn *c = db_pool_acquire(w->pool);
    if (c == NULL && elapsed_s(&b->first_try) * 1000.0 >= w->cfg->gateway.db_retry_ms) {
        log_warn("batch_failed", "events=%d requests=%d error=\"no database connection\"",
                 b->nevents, b->nwaiters);
        metrics_inc(w->m_failures, 1);
        finish_waiters(b, 503, "database unavailable");
        release_batch(w, b);
        try_flush(w);
        check_idle(w);
        return;
    }
    if (c == NULL) {
        struct timeval tv = {0, 100 * 1000};
        evtimer_add(b->retry_ev, &tv);
        return;
    }
    start_write(w, b, c);
}

static void on_written(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Batch *b = arg;
    Writer *w = b->w;
    b->writing = false;
    if (err == NULL) {
        double secs = elapsed_s(&b->started);
        metrics_inc(w->m_commits, 1);
        metrics_inc(w->m_events, b->nevents);
        metrics_observe(w->m_commit_seconds, secs);
        metrics_observe(w->m_batch_events, (double)b->nevents / 1000.0);
        log_debug("batch_committed", "events=%d seconds=%.4f", b->nevents, secs);
        finish_waiters(b, 200, "ok");
        release_batch(w, b);
        hint_pub_send(w->hints, "gw");
        try_flush(w);
        check_idle(w);
        return;
    }
    metrics_inc(w->m_failures, 1);
    /* The cached dataset may have been dropped under us (maintenance drops a
     * consumed dataset once a newer one exists): look it up again. */
    free(w->table);
    w->table = NULL;
    char q[1100];
    double waited_ms = elapsed_s(&b->first_try) * 1000.0;
    if (waited_ms >= w->cfg->gateway.db_retry_ms || w->draining) {
        log_warn("batch_failed", "events=%d requests=%d error=%s", b->nevents, b->nwaiters,
                 log_quote(q, sizeof q, err->msg));
        finish_waiters(b, 503, "database unavailable");
        release_batch(w, b);
        check_idle(w);
        return;
    }
    log_warn("batch_retry", "events=%d waited_ms=%.0f error=%s", b->nevents, waited_ms,
             log_quote(q, sizeof q, err->msg));
    if (b->retry_ev == NULL)
        b->retry_ev = evtimer_new(w->base, on_retry, b);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(b->retry_ev, &tv);
}

static void on_table(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Batch *b = arg;
    Writer *w = b->w;
    b->refreshing = false;
    if (err == NULL && (res == NULL || PQntuples(res) != 1)) {
        Err e;
        err_set(&e, ERR_DB, "no dataset for queue gw (run `pintlectl migrate`)");
        on_written(b, c, NULL, &e);
        return;
    }
    if (err != NULL) {
        on_written(b, c, NULL, err);
        return;
    }
    free(w->table);
    w->table = xstrdup(PQgetvalue(res, 0, 0));
    gettimeofday(&w->table_at, NULL);
    start_write(w, b, c);
}

static void start_write(Writer *w, Batch *b, DbConn *c)
{
    /* The newest dataset changes when maintenance rotates it; writing into
     * the previous one is still correct (readers read every dataset), so
     * the name is only refreshed every few seconds or after an error. */
    if (w->table == NULL || elapsed_s(&w->table_at) > 5.0) {
        const char *params[1] = {"gw"};
        b->refreshing = true;
        if (db_exec(c, JOBQ_SQL_NEWEST_DATASET, 1, params, NULL, 0, on_table, b) < 0) {
            Err e;
            err_set(&e, ERR_DB, "could not send dataset lookup");
            on_written(b, c, NULL, &e);
        }
        return;
    }
    buf_reset(&b->sql);
    jobq_format_write(&b->sql, JOBQ_GW, w->table, b->parts, b->nparts, true);
    buf_puts(&b->sql, "COMMIT");
    b->copy.data = b->rows.data;
    b->copy.len = b->rows.len;
    b->writing = true;
    gettimeofday(&b->started, NULL);
    if (db_exec(c, b->sql.data, -1, NULL, &b->copy, 1, on_written, b) < 0) {
        Err e;
        err_set(&e, ERR_DB, "could not send batch");
        on_written(b, c, NULL, &e);
    }
}

static void flush_one(Writer *w, DbConn *c)
{
    int slot = -1;
    for (int i = 0; i < w->max_inflight; i++)
        if (w->inflight[i] == NULL) {
            slot = i;
            break;
        }
    ASSERT(slot >= 0);
    Batch *b = xmalloc(sizeof(*b));
    *b = w->pending;
    batch_init(&w->pending, w);
    b->nparts = jobq_sort_partitions(b->parts, b->nparts);
    w->inflight[slot] = b;
    w->ninflight++;
    start_write(w, b, c);
}

static void try_flush(Writer *w)
{
    while (w->pending.nevents > 0 && w->ninflight < w->max_inflight) {
        bool full = w->pending.nevents >= w->cfg->gateway.batch_max_events || w->draining;
        if (w->ninflight > 0 && !full) {
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
        flush_one(w, c);
    }
}

static void on_wait(evutil_socket_t fd, short what, void *arg)
{
    Writer *w = arg;
    w->wait_armed = false;
    /* the wait is over: flush now even though another batch is in flight */
    while (w->pending.nevents > 0 && w->ninflight < w->max_inflight) {
        DbConn *c = db_pool_acquire(w->pool);
        if (c == NULL)
            return;
        flush_one(w, c);
    }
}

static void on_idle(void *arg)
{
    try_flush(arg);
}

/* Requests must not wait without bound for a connection: pending events
 * older than db_retry_ms are answered 503 (nothing was written for them). */
static void on_stall_check(evutil_socket_t fd, short what, void *arg)
{
    Writer *w = arg;
    Batch *b = &w->pending;
    if (b->nevents == 0 || elapsed_s(&b->first_try) * 1000.0 < w->cfg->gateway.db_retry_ms)
        return;
    log_warn("pending_expired", "events=%d requests=%d connected=%d", b->nevents, b->nwaiters,
             db_pool_connected(w->pool));
    finish_waiters(b, 503, "database unavailable");
    w->backlog_events -= b->nevents;
    batch_deinit(b);
    batch_init(b, w);
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
    w->inflight = xcalloc((size_t)w->max_inflight, sizeof(Batch *));
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
    w->m_failures = metrics_series(m, "pintle_gateway_batch_write_failures_total",
                                   "Batch writes that failed (retried or answered 503)",
                                   METRIC_COUNTER, "");
    w->m_commit_seconds = metrics_series(m, "pintle_gateway_commit_duration_seconds",
                                         "Time from sending a batch to its COMMIT",
                                         METRIC_HISTOGRAM, "");
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
    for (int i = 0; i < w->max_inflight; i++)
        if (w->inflight[i] != NULL)
            release_batch(w, w->inflight[i]);
    batch_deinit(&w->pending);
    event_free(w->wait_ev);
    event_free(w->stall_ev);
    free(w->inflight);
    free(w->table);
    free(w);
}

int writer_submit(Writer *w, IngestOut *in, WriterDoneCb done, void *arg, const char **why)
{
    if (w->draining) {
        *why = "shutting down";
        return -1;
    }
    if (db_pool_connected(w->pool) == 0) {
        *why = "database unavailable";
        return -1;
    }
    if (w->backlog_events + in->nevents > w->cfg->gateway.max_backlog_events) {
        *why = "server busy";
        return -1;
    }
    Batch *b = &w->pending;
    if (b->nevents == 0)
        gettimeofday(&b->first_try, NULL);
    buf_append(&b->rows, in->rows.data, in->rows.len);
    if (b->nparts + in->nevents > b->capparts) {
        b->capparts = (b->nparts + in->nevents) * 2;
        b->parts = xrealloc(b->parts, sizeof(int) * (size_t)b->capparts);
    }
    memcpy(b->parts + b->nparts, in->parts, sizeof(int) * (size_t)in->nevents);
    b->nparts += in->nevents;
    if (b->nwaiters == b->capwaiters) {
        b->capwaiters = b->capwaiters ? b->capwaiters * 2 : 16;
        b->waiters = xrealloc(b->waiters, sizeof(Waiter) * (size_t)b->capwaiters);
    }
    b->waiters[b->nwaiters++] = (Waiter){done, arg};
    b->nevents += in->nevents;
    w->backlog_events += in->nevents;
    try_flush(w);
    return 0;
}

int writer_backlog(const Writer *w)
{
    return w->backlog_events;
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
    finish_waiters(&w->pending, 503, "shutting down");
    w->backlog_events -= w->pending.nevents;
    batch_deinit(&w->pending);
    batch_init(&w->pending, w);
    for (int i = 0; i < w->max_inflight; i++) {
        Batch *b = w->inflight[i];
        if (b == NULL)
            continue;
        /* A batch whose COMMIT may be on the wire gets 503: the client
         * retries, so the event is stored at least once, never lost. */
        finish_waiters(b, 503, "shutting down");
        if (!b->writing && !b->refreshing)
            release_batch(w, b);
    }
}

bool writer_db_ready(const Writer *w)
{
    return db_pool_connected(w->pool) > 0;
}
