/* Router engine (see engine.h): the database side of the router.
 *
 * A term starts when the stage lock is taken: the cursors are read and
 * nothing else (rt_retries is never read whole). Then, one operation at a
 * time on the one connection, in this order of need:
 *  - flush (store.c): outcomes, parked rows and cursor moves, in batches of
 *    at least router.flush_interval_ms, sooner when a load waits for it;
 *  - load: the next page of parked rows of users whose head is done
 *    (order_take_loads), and the due scan: heads whose retry time came,
 *    paged by (next_retry_at, job_id) over an index. Both run only when
 *    nothing is left to flush, so what they read is complete;
 *  - claim: rt jobs beyond the cursors, while fewer than
 *    router.max_pending_jobs are in memory; loads and claims take turns so
 *    a destination catching up never holds back the others;
 *  - maintenance of the rt datasets.
 * What to deliver, park, load and flush is decided by order.c; deliveries
 * are sender.c's. Every tick parks the users of jobs that kept a cursor
 * waiting too long (router.spill_after_ms).
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * router') on its only connection; any database error drops all in-memory
 * state (after deliveries in flight return, their answers unrecorded) and
 * the engine starts over from the database: lock, cursors. */
#include "router/engine.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "router/order.h"
#include "router/sender.h"
#include "router/store.h"

/* Rows of one due scan, users per page load, rows per user and page. */
#define DUE_PAGE          256
#define LOAD_USERS        32
#define LOAD_PAGE         100
#define TICK_MS           50
#define SPILL_EVERY_TICKS 5

typedef enum State { ST_DOWN, ST_LOCKING, ST_LOADING, ST_UP, ST_RESET } State;

struct Engine {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    Httpc *http;
    Metrics *m;
    Order *order;
    Sender *sender;
    State state;
    unsigned long lock_gen;
    bool db_busy; /* an operation is running on the connection */
    bool stopping;
    bool spilled_at_stop; /* order_spill_all ran once deliveries ended */
    void (*stopped)(void *);
    void *stopped_arg;
    struct event *tick, *kick_ev, *cancel_ev;
    int64_t ticks;
    int backoff_ms;
    struct timeval next_db_try, maintained_at, flushed_at;
    bool want_claim;
    bool claim_turn; /* claims go before loads next time */
    int nparts;
    Buf sql, params;
    StoreFlush sf;
    OrderFlush fl;
    /* the due scan's position: rows after (due_at_text, due_after_id) */
    int64_t due_next_ms;
    char due_at_text[64];
    int64_t due_after_id;
    int due_limit;
    /* the page load in flight */
    OrderUser *load_users[LOAD_USERS];
    int64_t load_after[LOAD_USERS];
    int nload;
    OrderJob **load_jobs;
    int cap_load_jobs;
    MetricSeries *m_pending, *m_inflight, *m_active, *m_users;
    MetricSeries *m_parked, *m_spilled_budget, *m_spilled_cursor;
};

static void pump(Engine *e);

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static double since_ms(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) * 1000 + (double)(now.tv_usec - t->tv_usec) / 1000;
}

static void due_rewind(Engine *e)
{
    snprintf(e->due_at_text, sizeof e->due_at_text, "-infinity");
    e->due_after_id = 0;
}

static void db_failed(Engine *e, const char *step, const Err *err)
{
    char q[1100];
    log_warn("db_error", "step=%s error=%s", step, log_quote(q, sizeof q, err ? err->msg : "?"));
    e->db_busy = false;
    e->state = ST_RESET;
    /* answers still coming are not recorded: the next term reads them again */
    sender_discard(e->sender, true);
    metrics_set(e->m_active, 0);
    e->backoff_ms = e->backoff_ms ? e->backoff_ms * 2 : 200;
    if (e->backoff_ms > 5000)
        e->backoff_ms = 5000;
    gettimeofday(&e->next_db_try, NULL);
    e->next_db_try.tv_usec += (long)e->backoff_ms * 1000;
    e->next_db_try.tv_sec += e->next_db_try.tv_usec / 1000000;
    e->next_db_try.tv_usec %= 1000000;
    pump(e);
}

/* Sends an operation; on a send failure the term ends. */
static void send_op(Engine *e, DbConn *c, const char *step, const char *sql, int nparams,
                    const char *const *params, const DbCopy *copies, int ncopies, DbDoneCb cb)
{
    e->db_busy = true;
    if (db_exec(c, sql, nparams, params, copies, ncopies, cb, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send the %s statement", step);
        db_failed(e, step, &er);
    }
}

/* ---- claims ---- */

static void on_claimed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "claim", err);
        return;
    }
    int n = res ? PQntuples(res) : 0;
    int per = e->cfg->router.claim_batch / e->nparts + 8;
    int *got = xcalloc((size_t)e->nparts, sizeof(int));
    int64_t now = now_ms();
    bool full = false;
    for (int i = 0; i < n; i++) {
        OrderRows rows;
        OrderJob *j = store_claimed_job(res, i, &rows);
        if (j->partition < 0 || j->partition >= e->nparts) {
            order_job_free(j);
            continue;
        }
        if (++got[j->partition] >= per)
            full = true;
        order_push_claimed(e->order, j, rows, now);
    }
    free(got);
    e->want_claim = full;
    e->backoff_ms = 0;
    pump(e);
}

static void claim(Engine *e, DbConn *c)
{
    int64_t *cur = xmalloc(sizeof(int64_t) * (size_t)e->nparts);
    order_read_cursors(e->order, cur);
    buf_reset(&e->sql);
    store_format_claim(&e->sql, cur, e->nparts, e->cfg->router.claim_batch / e->nparts + 8);
    free(cur);
    e->want_claim = false;
    e->claim_turn = false;
    send_op(e, c, "claim", e->sql.data, -1, NULL, NULL, 0, on_claimed);
}

/* ---- rows coming back from rt_retries ---- */

static void on_due(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "due_scan", err);
        return;
    }
    int n = PQntuples(res);
    int64_t now = now_ms();
    for (int i = 0; i < n; i++)
        order_push_due(e->order, store_retry_job(res, i), now);
    order_due_end(e->order, now);
    if (n == e->due_limit) {
        /* a full page: go on from its last row at once */
        snprintf(e->due_at_text, sizeof e->due_at_text, "%s",
                 PQgetvalue(res, n - 1, STORE_DUE_AT_COL));
        e->due_after_id = strtoll(PQgetvalue(res, n - 1, 0), NULL, 10);
        e->due_next_ms = now;
    } else {
        due_rewind(e);
        e->due_next_ms = now + e->cfg->router.poll_interval_ms;
    }
    e->backoff_ms = 0;
    pump(e);
}

static bool due_scan(Engine *e, DbConn *c)
{
    int room = e->cfg->router.max_pending_jobs - order_jobs(e->order);
    if (room <= 0)
        return false;
    e->due_limit = room < DUE_PAGE ? room : DUE_PAGE;
    const char *full[64];
    int nfull = order_full_dests(e->order, full, 64);
    buf_reset(&e->params);
    store_put_text_array(&e->params, full, nfull);
    char id[32], lim[16];
    snprintf(id, sizeof id, "%" PRId64, e->due_after_id);
    snprintf(lim, sizeof lim, "%d", e->due_limit);
    const char *params[4] = {e->due_at_text, id, e->params.data, lim};
    e->claim_turn = true;
    order_due_begin(e->order);
    send_op(e, c, "due_scan", STORE_SQL_DUE, 4, params, NULL, 0, on_due);
    return true;
}

static void on_loaded(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "load_retries", err); /* the users are dropped with the state */
        return;
    }
    int n = PQntuples(res);
    int64_t now = now_ms();
    int row = 0;
    for (int k = 0; k < e->nload; k++) {
        int m = 0;
        while (row < n && atoi(PQgetvalue(res, row, STORE_LOAD_INDEX_COL)) == k + 1) {
            if (m == e->cap_load_jobs) {
                e->cap_load_jobs = e->cap_load_jobs ? e->cap_load_jobs * 2 : LOAD_PAGE;
                e->load_jobs =
                    xrealloc(e->load_jobs, sizeof(OrderJob *) * (size_t)e->cap_load_jobs);
            }
            e->load_jobs[m++] = store_retry_job(res, row++);
        }
        order_push_loaded(e->order, e->load_users[k], e->load_jobs, m, m == LOAD_PAGE, now);
    }
    e->nload = 0;
    e->backoff_ms = 0;
    pump(e);
}

static bool load(Engine *e, DbConn *c)
{
    e->nload = order_take_loads(e->order, e->load_users, e->load_after, LOAD_USERS, LOAD_PAGE);
    if (e->nload == 0)
        return false;
    const char *dests[LOAD_USERS], *users[LOAD_USERS];
    for (int i = 0; i < e->nload; i++) {
        dests[i] = order_user_dest(e->load_users[i]);
        users[i] = order_user_id(e->load_users[i]);
    }
    buf_reset(&e->params);
    store_put_text_array(&e->params, dests, e->nload);
    size_t off_users = e->params.len + 1;
    buf_putc(&e->params, '\0');
    store_put_text_array(&e->params, users, e->nload);
    size_t off_after = e->params.len + 1;
    buf_putc(&e->params, '\0');
    store_put_int64_array(&e->params, e->load_after, e->nload);
    char page[16];
    snprintf(page, sizeof page, "%d", LOAD_PAGE);
    const char *params[4] = {e->params.data, e->params.data + off_users, e->params.data + off_after,
                             page};
    e->claim_turn = true;
    send_op(e, c, "load_retries", STORE_SQL_LOAD, 4, params, NULL, 0, on_loaded);
    return true;
}

/* ---- flush ---- */

static void on_flushed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "flush", err); /* everything this flush held goes with the state */
        return;
    }
    order_flush_done(e->order, &e->fl, now_ms());
    e->backoff_ms = 0;
    pump(e);
}

static void flush(Engine *e, DbConn *c)
{
    gettimeofday(&e->flushed_at, NULL);
    order_flush_begin(e->order, &e->fl);
    store_format_flush(&e->sf, &e->fl);
    send_op(e, c, "flush", e->sf.sql.data, -1, NULL, e->sf.copies, e->sf.ncopies, on_flushed);
}

/* ---- term ---- */

static void on_cursors(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "load_cursors", err);
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        Err er;
        err_set(&er, ERR_DB, "no cursors for stage router (run `pintlectl migrate`)");
        db_failed(e, "load_cursors", &er);
        return;
    }
    int64_t *cur = xcalloc((size_t)n, sizeof(int64_t));
    for (int i = 0; i < n; i++) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < n)
            cur[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    e->nparts = n;
    order_start(e->order, cur, n);
    free(cur);
    sender_discard(e->sender, false);
    due_rewind(e);
    e->due_next_ms = 0;
    e->state = ST_UP;
    e->backoff_ms = 0;
    e->want_claim = true;
    metrics_set(e->m_active, 1);
    log_info("leader", "stage=router partitions=%d", n);
    pump(e);
}

static void on_locked(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "lock", err);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        e->state = ST_DOWN; /* standby: another router is active */
        gettimeofday(&e->next_db_try, NULL);
        e->next_db_try.tv_sec += 1;
        return;
    }
    e->lock_gen = db_conn_generation(c);
    e->state = ST_LOADING;
    send_op(e, c, "load_cursors",
            "SELECT partition, last_job_id FROM cursors WHERE stage = 'router' ORDER BY partition",
            -1, NULL, NULL, 0, on_cursors);
}

static void on_maintained(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    gettimeofday(&e->maintained_at, NULL);
    if (err != NULL) {
        char q[1100];
        log_warn("maintenance_failed", "queue=rt error=%s", log_quote(q, sizeof q, err->msg));
    } else if (res && atoi(PQgetvalue(res, 0, 0)) > 0) {
        log_info("datasets_dropped", "queue=rt count=%s", PQgetvalue(res, 0, 0));
    }
    pump(e);
}

/* Loads and due scans first when it is their turn or claims have nothing
 * to do; either waits for pending writes to be flushed first. */
static bool retries_step(Engine *e, DbConn *c, int64_t now)
{
    if (order_jobs(e->order) >= e->cfg->router.max_pending_jobs)
        return false; /* memory is full: what is in it goes first */
    bool want_load = order_loads_wanted(e->order);
    bool want_due = now >= e->due_next_ms;
    if (!want_load && !want_due)
        return false;
    if (order_has_writes(e->order)) {
        flush(e, c);
        return true;
    }
    if (want_load && load(e, c))
        return true;
    return want_due && due_scan(e, c);
}

/* Decides the next database operation (one at a time on the connection). */
static void db_step(Engine *e)
{
    if (e->db_busy)
        return;
    if (e->state == ST_RESET) {
        if (sender_inflight(e->sender) > 0)
            return; /* wait for deliveries to come back before dropping state */
        order_reset(e->order);
        e->state = ST_DOWN;
    }
    if (e->state == ST_DOWN && e->stopping)
        return;
    struct timeval now;
    gettimeofday(&now, NULL);
    if (e->state == ST_DOWN && timercmp(&now, &e->next_db_try, <))
        return;
    DbConn *c = db_pool_acquire(e->pool);
    if (c == NULL)
        return;
    if (e->state == ST_UP && db_conn_generation(c) != e->lock_gen) {
        db_conn_release(c);
        Err er;
        err_set(&er, ERR_DB, "database connection was re-established; the stage lock is gone");
        db_failed(e, "lock", &er);
        return;
    }
    if (e->state == ST_DOWN) {
        e->state = ST_LOCKING;
        send_op(e, c, "lock", "SELECT pg_try_advisory_lock(hashtext('pintle.stage.router'))", -1,
                NULL, NULL, 0, on_locked);
        return;
    }
    if (e->state != ST_UP) {
        db_conn_release(c);
        return;
    }
    if (e->stopping && !e->spilled_at_stop && sender_inflight(e->sender) == 0) {
        /* deliveries have ended: every claimed job without a row gets one,
         * so the final flush moves the cursors past all that was claimed
         * (what was delivered behind an undelivered job is not redone) */
        e->spilled_at_stop = true;
        int n = order_spill_all(e->order, now_ms());
        if (n > 0)
            log_info("users_spilled_at_stop", "count=%d", n);
    }
    if (order_flush_needed(e->order) &&
        (e->stopping || since_ms(&e->flushed_at) >= e->cfg->router.flush_interval_ms)) {
        flush(e, c);
        return;
    }
    if (e->stopping) {
        db_conn_release(c);
        return;
    }
    int64_t t = now_ms();
    bool can_claim = e->want_claim && order_jobs(e->order) < e->cfg->router.max_pending_jobs;
    if (can_claim && e->claim_turn) {
        claim(e, c);
        return;
    }
    if (retries_step(e, c, t))
        return;
    if (can_claim) {
        claim(e, c);
        return;
    }
    if (since_ms(&e->maintained_at) >= e->cfg->queue.maintenance_interval_ms) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT maintain_queue('rt', %lld, %d)",
                 (long long)e->cfg->queue.dataset_max_mb << 20, e->cfg->queue.dataset_max_age_s);
        send_op(e, c, "maintain", sql, -1, NULL, NULL, 0, on_maintained);
        return;
    }
    db_conn_release(c);
}

static void pump(Engine *e)
{
    if (e->state == ST_UP && !e->stopping)
        sender_dispatch(e->sender);
    db_step(e);
    if (e->stopping && sender_inflight(e->sender) == 0 && !e->db_busy &&
        (e->state != ST_UP || !order_flush_needed(e->order)) && e->stopped) {
        void (*cb)(void *) = e->stopped;
        e->stopped = NULL;
        cb(e->stopped_arg);
    }
}

static void after_delivery(void *arg)
{
    pump(arg);
}

/* Every 50 ms: park what keeps cursors waiting, poll, flush, claim. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    e->ticks++;
    if (e->state == ST_UP && !e->stopping && e->ticks % SPILL_EVERY_TICKS == 0) {
        int n = order_spill_blockers(e->order, now_ms());
        if (n > 0)
            log_debug("users_spilled", "count=%d", n);
    }
    /* poll for new jobs even without hints */
    if (e->ticks * TICK_MS % e->cfg->router.poll_interval_ms < TICK_MS)
        e->want_claim = true;
    metrics_set(e->m_pending, order_jobs(e->order));
    metrics_set(e->m_inflight, sender_inflight(e->sender));
    metrics_set(e->m_users, order_users(e->order));
    const OrderStats *os = order_stats(e->order);
    metrics_set(e->m_parked, (double)os->parked);
    metrics_set(e->m_spilled_budget, (double)os->spilled_budget);
    metrics_set(e->m_spilled_cursor, (double)os->spilled_cursor);
    pump(e);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    e->want_claim = true;
    pump(e);
}

/* The shutdown deadline is near: deliveries still in flight are dropped
 * (at least once: they are claimed or loaded again after a restart). */
static void on_cancel(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    int n = sender_cancel(e->sender);
    if (n > 0)
        log_warn("deliveries_cancelled", "count=%d reason=shutdown_deadline", n);
    pump(e);
}

Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Httpc *http,
                      Metrics *m)
{
    Engine *e = xcalloc(1, sizeof(*e));
    e->base = base;
    e->cfg = cfg;
    e->pool = pool;
    e->http = http;
    e->m = m;
    OrderLimits lim = {cfg->router.max_pending_jobs, cfg->router.max_concurrency_per_destination,
                       cfg->router.max_pending_jobs_per_destination, cfg->router.spill_after_ms};
    e->order = order_create(&lim);
    e->sender = sender_create(cfg, http, m, e->order, after_delivery, e);
    buf_init(&e->sql);
    buf_init(&e->params);
    store_flush_init(&e->sf);
    due_rewind(e);
    gettimeofday(&e->maintained_at, NULL);
    e->m_pending =
        metrics_series(m, "pintle_router_pending_jobs", "rt jobs held in memory", METRIC_GAUGE, "");
    e->m_inflight = metrics_series(m, "pintle_router_inflight_requests", "Deliveries in flight",
                                   METRIC_GAUGE, "");
    e->m_users = metrics_series(m, "pintle_router_users", "(destination, user) queues in memory",
                                METRIC_GAUGE, "");
    e->m_parked = metrics_series(m, "pintle_router_parked_total",
                                 "Jobs parked in rt_retries behind an earlier job of their user",
                                 METRIC_COUNTER, "");
    e->m_spilled_budget =
        metrics_series(m, "pintle_router_spilled_users_total",
                       "Users whose jobs were moved from memory to rt_retries, by reason",
                       METRIC_COUNTER, "reason=\"destination_budget\"");
    e->m_spilled_cursor =
        metrics_series(m, "pintle_router_spilled_users_total",
                       "Users whose jobs were moved from memory to rt_retries, by reason",
                       METRIC_COUNTER, "reason=\"cursor_wait\"");
    e->m_active = metrics_series(m, "pintle_router_active",
                                 "1 when this instance holds the router lock", METRIC_GAUGE, "");
    e->tick = event_new(base, -1, EV_PERSIST, on_tick, e);
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(e->tick, &tv);
    e->kick_ev = event_new(base, -1, 0, on_kick, e);
    e->cancel_ev = evtimer_new(base, on_cancel, e);
    event_active(e->kick_ev, 0, 0);
    return e;
}

void engine_destroy(Engine *e)
{
    if (e == NULL)
        return;
    sender_destroy(e->sender);
    order_destroy(e->order);
    buf_deinit(&e->sql);
    buf_deinit(&e->params);
    store_flush_deinit(&e->sf);
    free(e->load_jobs);
    event_free(e->tick);
    event_free(e->kick_ev);
    event_free(e->cancel_ev);
    free(e);
}

void engine_kick(Engine *e)
{
    event_active(e->kick_ev, 0, 0);
}

void engine_stop(Engine *e, int cancel_after_ms, void (*done)(void *), void *arg)
{
    e->stopping = true;
    e->stopped = done;
    e->stopped_arg = arg;
    struct timeval tv = {cancel_after_ms / 1000, (cancel_after_ms % 1000) * 1000};
    evtimer_add(e->cancel_ev, &tv);
    pump(e);
}

bool engine_ready(const Engine *e, char *detail, size_t size)
{
    bool db = db_pool_connected(e->pool) > 0;
    snprintf(detail, size, "{\"db\":\"%s\",\"active\":%s,\"pending\":%d,\"inflight\":%d}",
             db ? "UP" : "DOWN", e->state == ST_UP ? "true" : "false", order_jobs(e->order),
             sender_inflight(e->sender));
    return db;
}
