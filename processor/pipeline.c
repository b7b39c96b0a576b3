/* Processor cycle (see pipeline.h).
 *
 * States: IDLE -> (LOCKING -> LOADING) -> (MAINTAIN) -> CLAIMING ->
 * TRANSFORMING -> (TABLES) -> COMMITTING -> IDLE. One batch at a time: its
 * jobs are routed in processor/route.c, its destination transforms run in
 * processor/transform.c, its outputs are collected in processor/outputs.c,
 * the partitions and cursors it reads are kept in processor/claim.c and its
 * hand-off transaction is formatted in processor/commit.c. This file only
 * sequences those steps on the one database connection.
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * processor') on its only connection; other processors wait as standbys. The
 * cursor update is also compare-and-set (check_cursors), so even a processor
 * that lost its lock without noticing cannot commit a duplicate hand-off.
 *
 * Shutdown: pipeline_stop abandons a batch that is being transformed (timers
 * cancelled, requests cancelled, nothing committed: the jobs are claimed
 * again after the restart) and lets a database step in progress finish, but
 * never past processor.shutdown_timeout_ms. */
#include "processor/pipeline.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "processor/claim.h"
#include "processor/commit.h"
#include "processor/outputs.h"
#include "processor/route.h"
#include "processor/transform.h"

typedef enum State {
    ST_IDLE,
    ST_LOCKING,
    ST_LOADING,
    ST_CLAIMING,
    ST_TRANSFORMING,
    ST_TABLES,
    ST_COMMITTING,
    ST_MAINTAIN
} State;

static const char *const state_names[] = {"idle",         "locking", "loading",    "claiming",
                                          "transforming", "tables",  "committing", "maintain"};

struct Pipeline {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    Httpc *http;
    HintPub *rt_hints, *batch_hints;
    WsWatcher *ws;
    State state;
    bool stopping;
    void (*stopped)(void *);
    void *stopped_arg;
    struct event *deadline_ev;
    bool leader;
    unsigned long lock_gen;
    ClaimPlan plan;
    int *move_parts; /* [P] scratch of the commit */
    int64_t *move_old, *move_new;
    /* current batch */
    Batch batch;
    TfBatch *tf;
    TfMetrics tf_metrics;
    Commit commit;
    Buf sql;
    char *rt_table, *brt_table;
    struct timeval tables_at, maintained_at;
    struct event *poll_ev;
    int backoff_ms;
    bool kicked;
    int64_t last_claim_rows;
    MetricSeries *m_events, *m_outputs, *m_filtered, *m_batches, *m_leader;
    MetricSeries *m_dead[DEAD_NREASONS];
};

static void cycle(Pipeline *p);

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static double since(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_usec - t->tv_usec) / 1e6;
}

/* Forgets the batch. Its transformer requests must be over (tf done ran). */
static void reset_batch(Pipeline *p)
{
    tf_batch_destroy(p->tf);
    p->tf = NULL;
    route_batch_reset(&p->batch);
}

static void go_idle(Pipeline *p, int delay_ms)
{
    p->state = ST_IDLE;
    if (p->stopping) {
        if (p->stopped) {
            void (*cb)(void *) = p->stopped;
            p->stopped = NULL;
            if (p->deadline_ev)
                evtimer_del(p->deadline_ev);
            cb(p->stopped_arg);
        }
        return;
    }
    if (p->kicked || delay_ms == 0) {
        p->kicked = false;
        event_active(p->poll_ev, 0, 0);
        return;
    }
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(p->poll_ev, &tv);
}

/* A database failure: forget leadership (the session may be gone) and back off. */
static void db_failed(Pipeline *p, const char *what, const Err *err)
{
    char q[1100];
    log_warn("db_error", "step=%s error=%s", what, log_quote(q, sizeof q, err ? err->msg : "?"));
    if (err && strstr(err->msg, "moved by another consumer")) {
        log_warn("cursor_conflict", "action=reload");
    }
    p->leader = false;
    metrics_set(p->m_leader, 0);
    /* a cached dataset may have been dropped by maintenance: look them up again */
    free(p->rt_table);
    free(p->brt_table);
    p->rt_table = p->brt_table = NULL;
    reset_batch(p);
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : 200;
    if (p->backoff_ms > p->cfg->processor.retry_max_backoff_ms)
        p->backoff_ms = p->cfg->processor.retry_max_backoff_ms;
    go_idle(p, p->backoff_ms);
}

static DbConn *conn(Pipeline *p)
{
    DbConn *c = db_pool_acquire(p->pool);
    if (c != NULL && p->leader && db_conn_generation(c) != p->lock_gen) {
        log_warn("lock_lost", "reason=reconnected");
        p->leader = false;
        metrics_set(p->m_leader, 0);
    }
    return c;
}

/* ---- commit ---- */

static void on_committed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "commit", err);
        return;
    }
    CommitTally t;
    commit_publish(&p->batch, p->rt_hints, p->batch_hints, &t);
    metrics_inc(p->m_events, p->batch.njobs);
    metrics_inc(p->m_outputs, t.rt + t.batch_rt);
    for (int r = 0; r < DEAD_NREASONS; r++)
        if (t.dead_by[r] > 0) {
            metrics_inc(p->m_dead[r], t.dead_by[r]);
            /* one line per batch and reason: bounded, however many events */
            log_warn("dead_lettered", "reason=%s count=%d", outputs_reason_label((DeadReason)r),
                     t.dead_by[r]);
        }
    metrics_inc(p->m_filtered, t.filtered);
    metrics_inc(p->m_batches, 1);
    log_debug("batch_committed", "jobs=%d rt=%d batch_rt=%d dead=%d filtered=%d", p->batch.njobs,
              t.rt, t.batch_rt, t.dead, t.filtered);
    claim_plan_committed(&p->plan);
    p->backoff_ms = 0;
    reset_batch(p);
    /* a full claim means more is probably waiting: go again at once */
    go_idle(p, p->last_claim_rows > 0 ? 0 : p->cfg->processor.poll_interval_ms);
}

static void commit(Pipeline *p, DbConn *c)
{
    /* advance only the partitions this batch read */
    CommitMoves moves = {p->move_parts, p->move_old, p->move_new, 0};
    moves.n = claim_plan_moves(&p->plan, p->move_parts, p->move_old, p->move_new);
    commit_format(&p->commit, &p->batch, p->rt_table, p->brt_table, &moves);
    p->state = ST_COMMITTING;
    if (db_exec(c, p->commit.sql.data, -1, NULL, p->commit.copies, p->commit.ncopies, on_committed,
                p) < 0) {
        Err e;
        err_set(&e, ERR_DB, "could not send commit");
        db_failed(p, "commit", &e);
    }
}

static void on_tables(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "dataset_lookup", err);
        return;
    }
    for (int i = 0; res && i < PQntuples(res); i++) {
        const char *q = PQgetvalue(res, i, 0);
        char **slot = strcmp(q, "rt") == 0         ? &p->rt_table
                      : strcmp(q, "batch_rt") == 0 ? &p->brt_table
                                                   : NULL;
        if (slot) {
            free(*slot);
            *slot = xstrdup(PQgetvalue(res, i, 1));
        }
    }
    gettimeofday(&p->tables_at, NULL);
    commit(p, c);
}

/* c: the connection when called from inside a db callback (still reserved), else NULL. */
static void all_transformed(Pipeline *p, DbConn *c)
{
    if (c == NULL)
        c = conn(p);
    if (c == NULL || !p->leader) {
        if (c)
            db_conn_release(c);
        Err e;
        err_set(&e, ERR_DB, "database connection lost before commit");
        db_failed(p, "commit", &e);
        return;
    }
    if (p->rt_table == NULL || p->brt_table == NULL || since(&p->tables_at) > 5.0) {
        p->state = ST_TABLES;
        if (db_exec(c,
                    "SELECT queue, table_name FROM datasets d WHERE idx ="
                    " (SELECT max(idx) FROM datasets WHERE queue = d.queue)",
                    -1, NULL, NULL, 0, on_tables, p) < 0) {
            Err e;
            err_set(&e, ERR_DB, "could not send dataset lookup");
            db_failed(p, "dataset_lookup", &e);
        }
        return;
    }
    commit(p, c);
}

static void on_transformed(void *arg, bool complete)
{
    Pipeline *p = arg;
    if (!complete) {
        /* abandoned (shutdown): nothing is committed; the jobs are claimed again */
        log_info("batch_abandoned", "jobs=%d reason=shutdown", p->batch.njobs);
        reset_batch(p);
        go_idle(p, 0);
        return;
    }
    all_transformed(p, NULL);
}

/* ---- claim ---- */

static void on_claimed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "claim", err);
        return;
    }
    if (p->stopping) {
        go_idle(p, 0); /* not started: nothing to hand back */
        return;
    }
    int n = res ? PQntuples(res) : 0;
    p->last_claim_rows = n;
    claim_plan_begin(&p->plan);
    if (n == 0) {
        claim_plan_end(&p->plan);
        go_idle(p, p->cfg->processor.poll_interval_ms);
        return;
    }
    p->tf = tf_batch_create(p->base, &p->cfg->processor, p->http, &p->tf_metrics, &p->batch.outs);
    route_batch_load(&p->batch, res, ws_watcher_ref(p->ws), p->tf, now_ms());
    for (int i = 0; i < n; i++)
        claim_plan_row(&p->plan, p->batch.jobs[i].partition, p->batch.jobs[i].job_id);
    claim_plan_end(&p->plan);
    if (tf_batch_chunks(p->tf) == 0) {
        all_transformed(p, c);
        return;
    }
    p->state = ST_TRANSFORMING;
    tf_batch_start(p->tf, on_transformed, p);
}

static void claim(Pipeline *p, DbConn *c)
{
    /* called from db callbacks (cycle() never runs while stopping): the
     * connection goes back when the callback returns */
    if (p->stopping) {
        go_idle(p, 0);
        return;
    }
    buf_reset(&p->sql);
    claim_plan_format(&p->plan, &p->sql);
    p->state = ST_CLAIMING;
    if (db_exec(c, p->sql.data, -1, NULL, NULL, 0, on_claimed, p) < 0) {
        Err e;
        err_set(&e, ERR_DB, "could not send claim");
        db_failed(p, "claim", &e);
    }
}

static void on_cursors(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "load_cursors", err);
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        Err e;
        err_set(&e, ERR_DB, "no cursors for stage processor (run `pintlectl migrate`)");
        db_failed(p, "load_cursors", &e);
        return;
    }
    claim_plan_forget(&p->plan);
    int nact = 0;
    for (int i = 0; i < n; i++) {
        int part = atoi(PQgetvalue(res, i, 0));
        if (part < 0 || part >= p->plan.nparts)
            continue;
        claim_plan_set_cursor(&p->plan, part, strtoll(PQgetvalue(res, i, 1), NULL, 10), 1);
        p->move_parts[nact++] = part;
    }
    claim_plan_set_active(&p->plan, p->move_parts, nact);
    p->leader = true;
    p->lock_gen = db_conn_generation(c);
    metrics_set(p->m_leader, 1);
    log_info("leader", "stage=processor partitions=%d", nact);
    claim(p, c);
}

static void on_locked(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "lock", err);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        /* another processor is active: stand by */
        go_idle(p, 1000);
        return;
    }
    p->state = ST_LOADING;
    if (db_exec(c,
                "SELECT partition, last_job_id FROM cursors WHERE stage = 'processor'"
                " ORDER BY partition",
                -1, NULL, NULL, 0, on_cursors, p) < 0) {
        Err e;
        err_set(&e, ERR_DB, "could not send cursor load");
        db_failed(p, "load_cursors", &e);
    }
}

static void on_maintained(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    gettimeofday(&p->maintained_at, NULL);
    if (err != NULL) {
        char q[1100];
        log_warn("maintenance_failed", "queue=gw error=%s", log_quote(q, sizeof q, err->msg));
    } else if (res && atoi(PQgetvalue(res, 0, 0)) > 0) {
        log_info("datasets_dropped", "queue=gw count=%s", PQgetvalue(res, 0, 0));
    }
    p->state = ST_IDLE;
    claim(p, c);
}

static void cycle(Pipeline *p)
{
    if (p->state != ST_IDLE || p->stopping)
        return;
    DbConn *c = conn(p);
    if (c == NULL) {
        go_idle(p, 200);
        return;
    }
    if (!p->leader) {
        p->state = ST_LOCKING;
        if (db_exec(c, "SELECT pg_try_advisory_lock(hashtext('pintle.stage.processor'))", -1, NULL,
                    NULL, 0, on_locked, p) < 0) {
            Err e;
            err_set(&e, ERR_DB, "could not send lock");
            db_failed(p, "lock", &e);
        }
        return;
    }
    if (since(&p->maintained_at) * 1000 >= p->cfg->queue.maintenance_interval_ms) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT maintain_queue('gw', %lld, %d)",
                 (long long)p->cfg->queue.dataset_max_mb << 20, p->cfg->queue.dataset_max_age_s);
        p->state = ST_MAINTAIN;
        if (db_exec(c, sql, -1, NULL, NULL, 0, on_maintained, p) < 0) {
            Err e;
            err_set(&e, ERR_DB, "could not send maintenance");
            db_failed(p, "maintain", &e);
        }
        return;
    }
    claim(p, c);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    cycle(arg);
}

Pipeline *pipeline_create(struct event_base *base, const Config *cfg, DbPool *pool, Httpc *http,
                          HintPub *rt_hints, HintPub *batch_hints, WsWatcher *ws, Metrics *m)
{
    Pipeline *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->cfg = cfg;
    p->pool = pool;
    p->http = http;
    p->rt_hints = rt_hints;
    p->batch_hints = batch_hints;
    p->ws = ws;
    buf_init(&p->sql);
    route_batch_init(&p->batch);
    commit_init(&p->commit);
    int nparts = cfg->queue.partitions;
    claim_plan_init(&p->plan, nparts, cfg->processor.claim_batch);
    p->move_parts = xcalloc((size_t)nparts, sizeof(int));
    p->move_old = xcalloc((size_t)nparts, sizeof(int64_t));
    p->move_new = xcalloc((size_t)nparts, sizeof(int64_t));
    gettimeofday(&p->maintained_at, NULL);
    p->poll_ev = evtimer_new(base, on_poll, p);
    p->m_events =
        metrics_series(m, "pintle_processor_events_total", "gw jobs processed", METRIC_COUNTER, "");
    p->m_outputs = metrics_series(m, "pintle_processor_outputs_total",
                                  "rt and batch_rt jobs written", METRIC_COUNTER, "");
    for (int r = 0; r < DEAD_NREASONS; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "reason=\"%s\"", outputs_reason_label((DeadReason)r));
        p->m_dead[r] =
            metrics_series(m, "pintle_processor_dead_letters_total",
                           "Events written to dead_letters, by reason", METRIC_COUNTER, labels);
    }
    p->m_filtered = metrics_series(m, "pintle_processor_filtered_total",
                                   "Events the transformer filtered (298)", METRIC_COUNTER, "");
    p->m_batches = metrics_series(m, "pintle_processor_batches_total", "Batches committed",
                                  METRIC_COUNTER, "");
    p->tf_metrics.seconds =
        metrics_series(m, "pintle_processor_transformer_request_duration_seconds",
                       "Transformer request latency", METRIC_HISTOGRAM, "");
    p->tf_metrics.retries = metrics_series(m, "pintle_processor_transformer_retries_total",
                                           "Transformer requests retried", METRIC_COUNTER, "");
    p->tf_metrics.splits = metrics_series(
        m, "pintle_processor_transformer_splits_total",
        "Chunks split in halves because the answer was over the limit", METRIC_COUNTER, "");
    p->m_leader = metrics_series(m, "pintle_processor_active",
                                 "1 when this instance holds the processor lock", METRIC_GAUGE, "");
    event_active(p->poll_ev, 0, 0);
    return p;
}

void pipeline_destroy(Pipeline *p)
{
    if (p == NULL)
        return;
    reset_batch(p);
    route_batch_deinit(&p->batch);
    commit_deinit(&p->commit);
    buf_deinit(&p->sql);
    event_free(p->poll_ev);
    if (p->deadline_ev)
        event_free(p->deadline_ev);
    claim_plan_deinit(&p->plan);
    free(p->move_parts);
    free(p->move_old);
    free(p->move_new);
    free(p->rt_table);
    free(p->brt_table);
    free(p);
}

void pipeline_kick(Pipeline *p)
{
    if (p->state == ST_IDLE) {
        evtimer_del(p->poll_ev);
        event_active(p->poll_ev, 0, 0);
    } else {
        p->kicked = true;
    }
}

/* The shutdown deadline: whatever is still in progress is given up. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    Pipeline *p = arg;
    log_warn("shutdown_deadline", "state=%s timeout_ms=%d", state_names[p->state],
             p->cfg->processor.shutdown_timeout_ms);
    if (p->tf != NULL && p->state == ST_TRANSFORMING)
        tf_batch_abandon(p->tf);
    /* an uncommitted batch is simply claimed again; a COMMIT in flight
     * either happened or did not, and the cursors say which */
    if (p->stopped) {
        void (*cb)(void *) = p->stopped;
        p->stopped = NULL;
        cb(p->stopped_arg);
    }
}

void pipeline_stop(Pipeline *p, void (*done)(void *), void *arg)
{
    p->stopping = true;
    p->stopped = done;
    p->stopped_arg = arg;
    evtimer_del(p->poll_ev);
    if (p->state == ST_IDLE) {
        go_idle(p, 0);
        return;
    }
    int ms = p->cfg->processor.shutdown_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    p->deadline_ev = evtimer_new(p->base, on_deadline, p);
    evtimer_add(p->deadline_ev, &tv);
    /* transforming: give the batch up now (never commit half of it); any
     * other state is a database step that ends soon, or at the deadline */
    if (p->state == ST_TRANSFORMING)
        tf_batch_abandon(p->tf);
}

bool pipeline_ready(const Pipeline *p, char *detail, size_t size)
{
    bool db = db_pool_connected(p->pool) > 0;
    snprintf(detail, size, "{\"db\":\"%s\",\"active\":%s,\"state\":\"%s\"}", db ? "UP" : "DOWN",
             p->leader ? "true" : "false", state_names[p->state]);
    return db;
}
