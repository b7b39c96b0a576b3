/* Router engine (see engine.h): schedules the router's database work on
 * its one connection and its deliveries, on the partitions it leases.
 *
 * The partitions (parts.c) follow the lease: a partition gained has its
 * cursor loaded first (nothing else of rt_retries is read then). Then, one
 * operation at a time on the one connection, in this order of need:
 *  - flush (flush.c): outcomes, parked rows and cursor moves, fenced by the
 *    leases they belong to, in batches of at least router.flush_interval_ms,
 *    sooner when a load waits for it or a partition is being given back;
 *  - cursors of partitions gained (parts.c);
 *  - reload (reload.c): the next page of parked rows of users whose head is
 *    done, and the due scan of heads whose retry time came, of the leased
 *    partitions. Both run only when nothing is left to flush, so what they
 *    read is complete;
 *  - claim (claim.c): rt jobs beyond the cursors, while fewer than
 *    router.max_pending_jobs are in memory; reloads and claims take turns
 *    so a destination catching up never holds back the others;
 *  - maintenance of the rt datasets.
 * What to deliver, park, load and flush is decided by order.c; deliveries
 * are sender.c's. Every tick parks the users of jobs that kept a cursor
 * waiting too long (router.spill_after_ms).
 *
 * Leases: engine_leases_changed (after a lease tick) drops the state of
 * partitions lost at once, pauses those given back (handed back once idle)
 * and loads those gained; every pump first checks that the lease's clock
 * has not run out, so no delivery starts on a partition another instance
 * may own. A flush refused by the fence (lease_fenced) drops the state of
 * the partitions it wrote to; their next owner delivers that work again (at
 * least once). Limits (router.max_concurrency_per_destination, memory
 * budgets) are this instance's, whatever the number of instances.
 *
 * Any other database error drops all in-memory state (after deliveries in
 * flight return, their answers unrecorded) and the engine starts over from
 * the database after a backoff: the cursors of the partitions it leases. */
#include "router/engine.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "router/claim.h"
#include "router/flush.h"
#include "router/order.h"
#include "router/parts.h"
#include "router/reload.h"
#include "router/sender.h"
#include "router/store.h"

#define TICK_MS           50
#define SPILL_EVERY_TICKS 5

typedef enum State {
    ST_UP,    /* working on the leased partitions */
    ST_RESET, /* a database error: state goes once deliveries return */
    ST_DOWN,  /* state dropped: starts over after next_db_try */
} State;

/* The operation running on the connection. */
typedef enum Op { OP_NONE, OP_CURSORS, OP_CLAIM, OP_RELOAD, OP_FLUSH, OP_MAINTAIN } Op;

struct Engine {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    Httpc *http;
    Metrics *m;
    Order *order;
    Sender *sender;
    Lease *lease;
    const Ops *ops; /* degraded: claim and deliver nothing */
    Parts *parts;
    Claim *claim;
    Reload *reload;
    Flusher *flusher;
    State state;
    Op op; /* OP_NONE: the connection is free for the next operation */
    StoreStmt stmt;
    char maintain_sql[160];
    bool stopping;
    bool spilled_at_stop; /* order_spill_all ran once deliveries ended */
    void (*stopped)(void *);
    void *stopped_arg;
    struct event *tick, *kick_ev, *cancel_ev;
    int64_t ticks;
    int backoff_ms;
    struct timeval next_db_try, maintained_at;
    bool claim_turn; /* claims go before reloads next time */
    MetricSeries *m_pending, *m_inflight, *m_partitions, *m_users, *m_fenced;
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

static void retry_after(Engine *e, int ms)
{
    gettimeofday(&e->next_db_try, NULL);
    e->next_db_try.tv_usec += (long)ms * 1000;
    e->next_db_try.tv_sec += e->next_db_try.tv_usec / 1000000;
    e->next_db_try.tv_usec %= 1000000;
}

/* Deliveries in flight are not recorded, the state is dropped once they
 * returned, and the engine starts over after a backoff. */
static void db_failed(Engine *e, const char *step, const Err *err)
{
    char q[1100];
    log_warn("db_error", "step=%s error=%s", step, log_quote(q, sizeof q, err ? err->msg : "?"));
    e->op = OP_NONE;
    e->state = ST_RESET;
    /* answers still coming are not recorded: they are read again */
    sender_discard(e->sender, true);
    e->backoff_ms = e->backoff_ms ? e->backoff_ms * 2 : 200;
    if (e->backoff_ms > 5000)
        e->backoff_ms = 5000;
    retry_after(e, e->backoff_ms);
    pump(e);
}

static void on_maintained(Engine *e, const PGresult *res, const Err *err)
{
    gettimeofday(&e->maintained_at, NULL);
    if (err != NULL) {
        char q[1100];
        log_warn("maintenance_failed", "queue=rt error=%s", log_quote(q, sizeof q, err->msg));
    } else if (res && atoi(PQgetvalue(res, 0, 0)) > 0) {
        log_info("datasets_dropped", "queue=rt count=%s", PQgetvalue(res, 0, 0));
    }
}

static void count_partitions(Engine *e)
{
    metrics_set(e->m_partitions, parts_open(e->parts));
}

/* Takes the lease's view of the partitions. */
static void follow(Engine *e)
{
    if (e->state != ST_UP)
        return; /* starting over follows it then */
    PartsChange ch = parts_follow(e->parts, e->stopping, now_ms());
    if (ch.dropped > 0)
        log_info("partitions_dropped", "reason=lease_lost count=%d open=%d", ch.dropped,
                 parts_open(e->parts));
    if (ch.resumed > 0)
        claim_want(e->claim);
    count_partitions(e);
}

static void on_cursors(Engine *e, const PGresult *res)
{
    PartsChange ch = parts_push_load(e->parts, res, now_ms());
    if (ch.opened == 0)
        return;
    /* new partitions: claim them, and scan their due rows from the start */
    reload_rewind(e->reload);
    claim_want(e->claim);
    count_partitions(e);
    log_info("partitions_opened", "count=%d open=%d", ch.opened, parts_open(e->parts));
}

/* The fence refused the flush: another instance owns one of its
 * partitions now. Nothing of it was written. */
static void on_fenced(Engine *e, const Err *err)
{
    const int *touched;
    int n = flusher_touched(e->flusher, &touched);
    char list[512], q[1100];
    parts_format_list(list, sizeof list, touched, n);
    log_warn("lease_fenced", "partitions=%s error=%s", list, log_quote(q, sizeof q, err->msg));
    metrics_inc(e->m_fenced, 1);
    parts_fenced(e->parts, touched, n);
    follow(e);
}

/* One result handler for every operation: what ran decides who gets it. */
static void on_done(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    Op op = e->op;
    e->op = OP_NONE;
    if (op == OP_MAINTAIN) {
        on_maintained(e, res, err);
        pump(e);
        return;
    }
    if (err != NULL && op == OP_FLUSH && lease_is_fenced(err)) {
        on_fenced(e, err);
        pump(e);
        return;
    }
    if (err != NULL) {
        /* a failed flush's writes, a claim's or load's rows: all go with the state */
        db_failed(e, e->stmt.step, err);
        return;
    }
    int64_t now = now_ms();
    switch (op) {
    case OP_CURSORS:
        on_cursors(e, res);
        break;
    case OP_CLAIM:
        claim_push(e->claim, res, now);
        break;
    case OP_RELOAD:
        reload_push(e->reload, res, now);
        break;
    case OP_FLUSH:
        flusher_done(e->flusher, now);
        break;
    default:
        ASSERT(!"unexpected operation");
    }
    e->backoff_ms = 0;
    pump(e);
}

/* Sends e->stmt; a send failure is a database error. */
static void send_op(Engine *e, DbConn *c, Op op)
{
    const StoreStmt *st = &e->stmt;
    e->op = op;
    if (db_exec(c, st->sql, st->nparams, st->nparams >= 0 ? st->params : NULL, st->copies,
                st->ncopies, on_done, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send the %s statement", st->step);
        db_failed(e, st->step, &er);
    }
}

static void flush(Engine *e, DbConn *c)
{
    flusher_format(e->flusher, &e->stmt);
    send_op(e, c, OP_FLUSH);
}

static bool claim(Engine *e, DbConn *c)
{
    e->claim_turn = false;
    if (!claim_format(e->claim, &e->stmt))
        return false;
    send_op(e, c, OP_CLAIM);
    return true;
}

/* Reloads first when it is their turn or claims have nothing to do;
 * either waits for pending writes to be flushed first. */
static bool reload_step(Engine *e, DbConn *c, int64_t now)
{
    if (!reload_wanted(e->reload, now))
        return false;
    if (order_has_writes(e->order)) {
        flush(e, c);
        return true;
    }
    if (!reload_format(e->reload, now, &e->stmt))
        return false;
    e->claim_turn = true;
    send_op(e, c, OP_RELOAD);
    return true;
}

/* Decides the next database operation (one at a time on the connection). */
static void db_step(Engine *e)
{
    if (e->op != OP_NONE)
        return;
    if (e->state == ST_RESET) {
        if (sender_inflight(e->sender) > 0)
            return; /* wait for deliveries to come back before dropping state */
        order_reset(e->order);
        parts_reset(e->parts);
        reload_rewind(e->reload);
        count_partitions(e);
        e->state = ST_DOWN;
    }
    if (e->state == ST_DOWN) {
        struct timeval now;
        gettimeofday(&now, NULL);
        if (e->stopping || timercmp(&now, &e->next_db_try, <))
            return;
        e->state = ST_UP;
        sender_discard(e->sender, false);
        follow(e);
    }
    DbConn *c = db_pool_acquire(e->pool);
    if (c == NULL)
        return;
    if (e->stopping && !e->spilled_at_stop && sender_inflight(e->sender) == 0) {
        /* deliveries have ended: every claimed job without a row gets one,
         * so the final flush moves the cursors past all that was claimed
         * (what was delivered behind an undelivered job is not redone) */
        e->spilled_at_stop = true;
        int n = order_spill_all(e->order, now_ms());
        if (n > 0)
            log_info("users_spilled_at_stop", "count=%d", n);
    }
    if (flusher_due(e->flusher, e->stopping || parts_flush_wanted(e->parts))) {
        flush(e, c);
        return;
    }
    if (e->stopping) {
        db_conn_release(c);
        return;
    }
    if (parts_load_wanted(e->parts)) {
        parts_format_load(e->parts, &e->stmt);
        send_op(e, c, OP_CURSORS);
        return;
    }
    int64_t t = now_ms();
    bool can_claim = claim_wanted(e->claim) && !ops_degraded(e->ops);
    if (can_claim && e->claim_turn && claim(e, c))
        return;
    if (reload_step(e, c, t))
        return;
    if (can_claim && claim(e, c))
        return;
    if (since_ms(&e->maintained_at) >= e->cfg->queue.maintenance_interval_ms) {
        snprintf(e->maintain_sql, sizeof e->maintain_sql, "SELECT maintain_queue('rt', %lld, %d)",
                 (long long)e->cfg->queue.dataset_max_mb << 20, e->cfg->queue.dataset_max_age_s);
        e->stmt = (StoreStmt){.step = "maintain", .sql = e->maintain_sql, .nparams = -1};
        send_op(e, c, OP_MAINTAIN);
        return;
    }
    db_conn_release(c);
}

static bool is_up(const Engine *e)
{
    return e->state == ST_UP;
}

static void pump(Engine *e)
{
    /* after a pause (SIGSTOP, swap) the lease's clock may have run out
     * before its expiry timer ran: nothing new starts on it then */
    if (is_up(e) && !parts_fresh(e->parts))
        follow(e);
    if (is_up(e) && !e->stopping && !ops_degraded(e->ops))
        sender_dispatch(e->sender);
    if (is_up(e)) {
        int n = parts_hand_back(e->parts, now_ms());
        if (n > 0) {
            log_info("partitions_handed_back", "count=%d open=%d", n, parts_open(e->parts));
            count_partitions(e);
        }
    }
    db_step(e);
    if (e->stopping && sender_inflight(e->sender) == 0 && e->op == OP_NONE &&
        (!is_up(e) || !order_flush_needed(e->order)) && e->stopped) {
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
    if (is_up(e) && !e->stopping && e->ticks % SPILL_EVERY_TICKS == 0) {
        int n = order_spill_blockers(e->order, now_ms());
        if (n > 0)
            log_debug("users_spilled", "count=%d", n);
    }
    /* poll for new jobs even without hints */
    if (e->ticks * TICK_MS % e->cfg->router.poll_interval_ms < TICK_MS)
        claim_want(e->claim);
    metrics_set(e->m_pending, order_jobs(e->order));
    metrics_set(e->m_inflight, sender_inflight(e->sender));
    metrics_set(e->m_users, order_users(e->order));
    const OrderStats *os = order_stats(e->order);
    metrics_set(e->m_parked, (double)os->parked);
    metrics_set(e->m_spilled_budget, (double)os->spilled_budget);
    metrics_set(e->m_spilled_cursor, (double)os->spilled_cursor);
    pump(e);
}

void engine_set_ops(Engine *e, const Ops *ops)
{
    e->ops = ops;
    sender_set_ops(e->sender, ops);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    claim_want(e->claim);
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

static void create_metrics(Engine *e, Metrics *m)
{
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
    e->m_partitions =
        metrics_series(m, "pintle_router_partitions_open",
                       "Leased partitions whose work this instance holds", METRIC_GAUGE, "");
    e->m_fenced =
        metrics_series(m, "pintle_router_fenced_flushes_total",
                       "Status flushes refused because a lease was lost", METRIC_COUNTER, "");
}

Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                      Httpc *http, Metrics *m, WsWatcher *ws)
{
    Engine *e = xcalloc(1, sizeof(*e));
    e->base = base;
    e->cfg = cfg;
    e->pool = pool;
    e->http = http;
    e->m = m;
    OrderLimits lim = {cfg->router.max_pending_jobs, cfg->router.max_concurrency_per_destination,
                       cfg->router.max_pending_jobs_per_destination, cfg->router.spill_after_ms};
    e->order = order_create(&lim, lease_partitions(lease));
    e->sender = sender_create(base, cfg, http, m, e->order, ws, after_delivery, e);
    e->lease = lease;
    e->parts = parts_create(lease, e->order);
    e->claim = claim_create(&cfg->router, e->order);
    e->reload = reload_create(&cfg->router, e->order);
    e->flusher = flusher_create(&cfg->router, e->order, lease, e->parts);
    gettimeofday(&e->maintained_at, NULL);
    create_metrics(e, m);
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
    flusher_destroy(e->flusher);
    reload_destroy(e->reload);
    claim_destroy(e->claim);
    parts_destroy(e->parts);
    order_destroy(e->order);
    event_free(e->tick);
    event_free(e->kick_ev);
    event_free(e->cancel_ev);
    free(e);
}

void engine_kick(Engine *e)
{
    event_active(e->kick_ev, 0, 0);
}

void engine_leases_changed(Engine *e)
{
    follow(e);
    pump(e);
}

void engine_stop(Engine *e, int cancel_after_ms, void (*done)(void *), void *arg)
{
    e->stopping = true;
    follow(e); /* nothing more is opened */
    e->stopped = done;
    e->stopped_arg = arg;
    struct timeval tv = {cancel_after_ms / 1000, (cancel_after_ms % 1000) * 1000};
    evtimer_add(e->cancel_ev, &tv);
    pump(e);
}

bool engine_ready(const Engine *e, char *detail, size_t size)
{
    bool db = db_pool_connected(e->pool) > 0;
    int n = is_up(e) ? parts_open(e->parts) : 0;
    snprintf(detail, size,
             "{\"db\":\"%s\",\"active\":%s,\"partitions\":%d,\"pending\":%d,\"inflight\":%d}",
             db ? "UP" : "DOWN", n > 0 ? "true" : "false", n, order_jobs(e->order),
             sender_inflight(e->sender));
    return db;
}
