/* Processor cycle (see pipeline.h).
 *
 * States: IDLE -> (MAINTAIN) -> (LOADING) -> CLAIMING -> (USER_TRANSFORMING)
 * -> TRANSFORMING -> (TABLES) -> COMMITTING -> IDLE. One batch at a time:
 * its jobs are routed in processor/route.c, its user transformations (for
 * destinations that have one; their outputs are routed on) and then its
 * destination transforms run in processor/transform.c, its outputs are collected in
 * processor/outputs.c, the partitions and cursors it reads are kept in processor/claim.c and its
 * hand-off transaction is formatted in processor/commit.c. This file only
 * sequences those steps on the one database connection.
 *
 * Partitions: the processor reads only partitions it holds a usable lease
 * on (common/lease.h). Right before each claim (no batch in flight then)
 * the active set is recomputed from the lease: a partition that became
 * usable, or was taken again at a new epoch, has its cursor read from the
 * database first (LOADING), because another instance may have moved it
 * meanwhile; one no longer usable leaves the set; one being given back is
 * reported quiesced. A lease change during a batch quiesces at once the
 * partitions being given back that the batch does not touch; the others
 * wait for the batch to end (committed, fenced or failed).
 *
 * Fencing: every hand-off transaction begins with lease_fence for the
 * partitions whose cursor it advances, at the epochs held now, and the
 * cursor update stays compare-and-set (check_cursors). The database alone
 * decides: a processor that was paused past its lease TTL and whose
 * partitions were taken over sends its commit and is refused (lease_fenced,
 * logged once per batch); the batch is dropped, nothing of it is written,
 * every cursor is read again, and the new owner processes those jobs. A
 * partition lost and taken again at a newer epoch passes the fence, and the
 * compare-and-set then refuses the commit if the other owner moved the
 * cursor in between.
 *
 * With no usable partition the processor idles (polling its lease) and
 * stays ready: an extra instance is a valid standby.
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

#include "common/jobq.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "processor/claim.h"
#include "processor/commit.h"
#include "processor/outputs.h"
#include "processor/route.h"
#include "processor/transform.h"

typedef enum State {
    ST_IDLE,
    ST_LOADING,
    ST_CLAIMING,
    ST_USER_TRANSFORMING,
    ST_TRANSFORMING,
    ST_TABLES,
    ST_COMMITTING,
    ST_MAINTAIN
} State;

static const char *const state_names[] = {
    "idle",         "loading", "claiming",   "user_transforming",
    "transforming", "tables",  "committing", "maintain"};

struct Pipeline {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool; /* NULL once stopped: the caller may close it */
    Lease *lease;
    const Ops *ops; /* degraded: claim nothing */
    Httpc *http;
    HintPub *rt_hints, *batch_hints;
    WsWatcher *ws;
    State state;
    bool stopping;
    void (*stopped)(void *);
    void *stopped_arg;
    struct event *deadline_ev;
    ClaimPlan plan;
    int *scratch;    /* [P] usable, then active partitions */
    int *load_parts; /* [P] cursors being read (LOADING) */
    int64_t *load_epochs;
    int nload;
    int *move_parts; /* [P] cursors the batch advances */
    int64_t *move_old, *move_new;
    int nmoves;
    /* current batch */
    Batch batch;
    TfBatch *ut; /* user transformations, before tf */
    TfBatch *tf;
    TfMetrics tf_metrics, ut_metrics;
    Commit commit;
    Buf sql;
    char *rt_table, *brt_table;
    struct timeval tables_at, maintained_at;
    struct event *poll_ev;
    int backoff_ms;
    bool kicked;
    int64_t last_claim_rows;
    MetricSeries *m_events, *m_outputs, *m_filtered, *m_batches, *m_fenced, *m_partitions;
    MetricSeries *m_user_filtered, *m_out;
    Metrics *m;
    HMap m_dest; /* "<kind> <destination>" -> MetricSeries (stage in, aborts) */
    MetricSeries *m_dead[DEAD_NREASONS];
};

static void next_step(Pipeline *p, DbConn *c, bool in_cb);
static void count_outputs(Pipeline *p);

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
    tf_batch_destroy(p->ut);
    p->ut = NULL;
    route_batch_reset(&p->batch);
    p->nmoves = 0;
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
            p->pool = NULL; /* promised to the caller: no database step after done */
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

/* A database failure: the outcome of a step in flight is unknown, so every
 * cursor is read again; back off. */
static void db_failed(Pipeline *p, const char *what, const Err *err)
{
    char q[1100];
    log_warn("db_error", "step=%s error=%s", what, log_quote(q, sizeof q, err ? err->msg : "?"));
    if (err && strstr(err->msg, "moved by another consumer")) {
        log_warn("cursor_conflict", "action=reload");
    }
    claim_plan_forget(&p->plan);
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
    return p->pool ? db_pool_acquire(p->pool) : NULL;
}

/* ---- partitions ---- */

/* Whether the step in progress may still write partition part's cursor. */
static bool in_flight(const Pipeline *p, int part)
{
    switch (p->state) {
    case ST_CLAIMING:
        return claim_plan_has(&p->plan, part);
    case ST_USER_TRANSFORMING:
    case ST_TRANSFORMING:
    case ST_TABLES:
    case ST_COMMITTING:
        return claim_plan_has(&p->plan, part) && p->plan.next[part] != p->plan.cursor[part];
    default:
        return false;
    }
}

/* Partitions being given back that nothing in progress touches are free to go. */
static void quiesce(Pipeline *p)
{
    for (int part = 0; part < p->plan.nparts; part++)
        if (lease_giving(p->lease, part) && !in_flight(p, part))
            lease_quiesced(p->lease, part);
}

/* Between batches: the active set is what the lease makes usable and whose
 * cursor was read under the epoch held now; the others are to be read. */
static void refresh(Pipeline *p)
{
    int n = lease_usable_list(p->lease, p->scratch);
    int nact = 0;
    p->nload = 0;
    for (int i = 0; i < n; i++) {
        int part = p->scratch[i];
        int64_t epoch = lease_epoch(p->lease, part);
        if (claim_plan_is_loaded(&p->plan, part, epoch)) {
            p->scratch[nact++] = part; /* nact <= i: in place */
        } else {
            p->load_parts[p->nload] = part;
            p->load_epochs[p->nload] = epoch;
            p->nload++;
        }
    }
    if (nact != p->plan.nactive || memcmp(p->scratch, p->plan.active, sizeof(int) * (size_t)nact))
        claim_plan_set_active(&p->plan, p->scratch, nact);
    metrics_set(p->m_partitions, (double)nact);
    quiesce(p);
}

/* ---- commit ---- */

/* The fence refused the commit: another instance owns one of the batch's
 * partitions now (this one was paused or cut off past its lease). */
static void fenced(Pipeline *p, const Err *err)
{
    Buf parts;
    buf_init(&parts);
    for (int i = 0; i < p->nmoves; i++)
        buf_printf(&parts, i ? ",%d" : "%d", p->move_parts[i]);
    log_warn("lease_fenced", "partitions=%s jobs=%d action=dropped owner=%s",
             parts.len ? parts.data : "", p->batch.njobs, lease_owner(p->lease));
    buf_deinit(&parts);
    metrics_inc(p->m_fenced, 1);
    claim_plan_forget(&p->plan);
    reset_batch(p);
    go_idle(p, 0);
}

static void on_committed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        if (lease_is_fenced(err))
            fenced(p, err);
        else
            db_failed(p, "commit", err);
        return;
    }
    CommitTally t;
    commit_publish(&p->batch, p->rt_hints, p->batch_hints, &t);
    metrics_inc(p->m_events, p->batch.njobs);
    metrics_inc(p->m_out, p->batch.njobs);
    count_outputs(p);
    metrics_inc(p->m_outputs, t.rt + t.batch_rt);
    for (int r = 0; r < DEAD_NREASONS; r++)
        if (t.dead_by[r] > 0) {
            metrics_inc(p->m_dead[r], t.dead_by[r]);
            /* one line per batch and reason: bounded, however many events */
            log_warn("dead_lettered", "reason=%s count=%d", outputs_reason_label((DeadReason)r),
                     t.dead_by[r]);
        }
    metrics_inc(p->m_filtered, t.filtered);
    metrics_inc(p->m_user_filtered, t.filtered_by_user);
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
    p->nmoves = claim_plan_moves(&p->plan, p->move_parts, p->move_old, p->move_new);
    CommitMoves moves = {p->move_parts, p->move_old, p->move_new, p->nmoves};
    commit_format(&p->commit, &p->batch, p->lease, p->rt_table, p->brt_table, &moves);
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
    if (c == NULL) {
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

/* The destination transforms, once the user transformations (if any) added
 * their outputs. c as for all_transformed. */
static void start_transforms(Pipeline *p, DbConn *c)
{
    if (tf_batch_chunks(p->tf) == 0) {
        all_transformed(p, c);
        return;
    }
    p->state = ST_TRANSFORMING;
    tf_batch_start(p->tf, on_transformed, p);
}

static void on_user_transformed(void *arg, bool complete)
{
    Pipeline *p = arg;
    if (!complete) {
        log_info("batch_abandoned", "jobs=%d reason=shutdown", p->batch.njobs);
        reset_batch(p);
        go_idle(p, 0);
        return;
    }
    start_transforms(p, NULL);
}

static void on_user_output(void *arg, int job, int seq, const WsDestination *d, const char *out,
                           size_t len)
{
    Pipeline *p = arg;
    route_user_output(&p->batch, p->tf, job, seq, d, out, len);
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
    p->ut = tf_batch_create_user(p->base, &p->cfg->processor, p->http, &p->ut_metrics,
                                 &p->batch.outs, on_user_output, p);
    route_batch_load(&p->batch, res, ws_watcher_ref(p->ws), p->ut, p->tf, now_ms());
    for (int i = 0; i < n; i++)
        claim_plan_row(&p->plan, p->batch.jobs[i].partition, p->batch.jobs[i].job_id);
    claim_plan_end(&p->plan);
    if (tf_batch_chunks(p->ut) > 0) {
        p->state = ST_USER_TRANSFORMING;
        tf_batch_start(p->ut, on_user_transformed, p);
        return;
    }
    start_transforms(p, c);
}

static void claim(Pipeline *p, DbConn *c, bool in_cb)
{
    if (p->plan.nactive == 0 || ops_degraded(p->ops)) {
        /* no usable partition (yet): a standby; the lease says when that
         * changes (degraded mode: the kick of the change back to normal). The connection goes back (inside a db callback: when it
         * returns, so a transaction left open is still rolled back) */
        if (!in_cb)
            db_conn_release(c);
        go_idle(p, p->cfg->processor.poll_interval_ms);
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
    int n = res ? PQntuples(res) : 0;
    if (n != p->nload) {
        Err e;
        err_set(&e, ERR_DB,
                "cursors of stage processor: %d of %d partitions found (run `pintlectl migrate`)",
                n, p->nload);
        db_failed(p, "load_cursors", &e);
        return;
    }
    /* rows in partition order, as load_parts */
    for (int i = 0; i < n; i++) {
        int part = atoi(PQgetvalue(res, i, 0));
        ASSERT(part == p->load_parts[i]);
        claim_plan_set_cursor(&p->plan, part, strtoll(PQgetvalue(res, i, 1), NULL, 10),
                              p->load_epochs[i]);
    }
    log_info("cursors_loaded", "stage=processor partitions=%d", n);
    next_step(p, c, true);
}

/* With the connection c reserved, from cycle() or from inside a db
 * callback (in_cb): reads the cursors the active set lacks, then claims. */
static void next_step(Pipeline *p, DbConn *c, bool in_cb)
{
    /* only from db callbacks (cycle() never runs while stopping): the
     * connection goes back when the callback returns */
    if (p->stopping) {
        go_idle(p, 0);
        return;
    }
    refresh(p);
    if (p->nload == 0) {
        claim(p, c, in_cb);
        return;
    }
    buf_reset(&p->sql);
    buf_puts(&p->sql, "SELECT partition, last_job_id FROM cursors WHERE stage = 'processor'"
                      " AND partition = ANY (");
    jobq_format_int_array(&p->sql, p->load_parts, p->nload);
    buf_puts(&p->sql, "::int[]) ORDER BY partition");
    p->state = ST_LOADING;
    if (db_exec(c, p->sql.data, -1, NULL, NULL, 0, on_cursors, p) < 0) {
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
    next_step(p, c, true);
}

static void cycle(Pipeline *p)
{
    if (p->state != ST_IDLE || p->stopping)
        return;
    DbConn *c = conn(p);
    if (c == NULL) {
        quiesce(p); /* nothing in flight: what is given back need not wait for the database */
        go_idle(p, 200);
        return;
    }
    /* any instance may maintain: maintain_queue serialises itself (try-lock) */
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
    next_step(p, c, false);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    cycle(arg);
}

/* The counter of one destination: jobs into the router's or batchrouter's
 * queue (pintle_stage_in_total of that stage), or events this stage gave
 * up into dead letters (pintle_aborts_total). */
static MetricSeries *dest_counter(Pipeline *p, OutputKind kind, const char *dest_id)
{
    char key[300];
    snprintf(key, sizeof key, "%d %s", (int)kind, dest_id);
    MetricSeries *s = hmap_get(&p->m_dest, key);
    if (s != NULL)
        return s;
    char d[300], l[360];
    metrics_format_label(d, sizeof d, "destination", dest_id);
    if (kind == OUTPUT_DEAD) {
        snprintf(l, sizeof l, "stage=\"processor\",%s", d);
        s = metrics_series(p->m, "pintle_aborts_total", METRICS_ABORTS_HELP, METRIC_COUNTER, l);
    } else {
        snprintf(l, sizeof l, "stage=\"%s\",%s", kind == OUTPUT_RT ? "router" : "batchrouter", d);
        s = metrics_series(p->m, "pintle_stage_in_total", METRICS_STAGE_IN_HELP, METRIC_COUNTER, l);
    }
    hmap_put(&p->m_dest, key, s);
    return s;
}

static void count_outputs(Pipeline *p)
{
    for (int i = 0; i < p->batch.outs.n; i++) {
        const Output *o = &p->batch.outs.v[i];
        if (o->kind == OUTPUT_RT || o->kind == OUTPUT_BATCH_RT || o->kind == OUTPUT_DEAD)
            metrics_inc(dest_counter(p, o->kind, o->dest_id), 1);
    }
}

static void transformer_metrics(Metrics *m, const char *call, TfMetrics *tm)
{
    char l[64];
    snprintf(l, sizeof l, "call=\"%s\"", call);
    tm->registry = m;
    tm->seconds = metrics_series(m, "pintle_transformer_request_duration_seconds",
                                 "Transformer request latency (call: destination transform or"
                                 " user transformation)",
                                 METRIC_HISTOGRAM, l);
    static const char *const classes[4] = {"2xx", "3xx", "4xx", "5xx"};
    for (int c = 0; c < 4; c++) {
        char lc[96];
        snprintf(lc, sizeof lc, "%s,status_class=\"%s\"", l, classes[c]);
        tm->errors[c] = metrics_series(m, "pintle_transformer_errors_total",
                                       "Transformer requests not answered 200 (no answer counts"
                                       " as 504), retried or failing their events",
                                       METRIC_COUNTER, lc);
    }
}

Pipeline *pipeline_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                          Httpc *http, HintPub *rt_hints, HintPub *batch_hints, WsWatcher *ws,
                          Metrics *m)
{
    Pipeline *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->cfg = cfg;
    p->pool = pool;
    p->lease = lease;
    p->http = http;
    p->rt_hints = rt_hints;
    p->batch_hints = batch_hints;
    p->ws = ws;
    p->m = m;
    hmap_init(&p->m_dest);
    buf_init(&p->sql);
    route_batch_init(&p->batch);
    commit_init(&p->commit);
    int nparts = lease_partitions(lease);
    claim_plan_init(&p->plan, nparts, cfg->processor.claim_batch);
    p->scratch = xcalloc((size_t)nparts, sizeof(int));
    p->load_parts = xcalloc((size_t)nparts, sizeof(int));
    p->load_epochs = xcalloc((size_t)nparts, sizeof(int64_t));
    p->move_parts = xcalloc((size_t)nparts, sizeof(int));
    p->move_old = xcalloc((size_t)nparts, sizeof(int64_t));
    p->move_new = xcalloc((size_t)nparts, sizeof(int64_t));
    gettimeofday(&p->maintained_at, NULL);
    p->poll_ev = evtimer_new(base, on_poll, p);
    p->m_events =
        metrics_series(m, "pintle_processor_events_total", "gw jobs processed", METRIC_COUNTER, "");
    p->m_outputs = metrics_series(m, "pintle_processor_outputs_total",
                                  "rt and batch_rt jobs written", METRIC_COUNTER, "");
    p->m_out = metrics_series(m, "pintle_stage_out_total", METRICS_STAGE_OUT_HELP, METRIC_COUNTER,
                              "stage=\"processor\",destination=\"\"");
    for (int r = 0; r < DEAD_NREASONS; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "reason=\"%s\"", outputs_reason_label((DeadReason)r));
        p->m_dead[r] =
            metrics_series(m, "pintle_processor_dead_letters_total",
                           "Events written to dead_letters, by reason", METRIC_COUNTER, labels);
    }
    p->m_filtered = metrics_series(m, "pintle_processor_filtered_total",
                                   "Events the transformer filtered (298)", METRIC_COUNTER, "");
    p->m_user_filtered =
        metrics_series(m, "pintle_processor_user_transform_filtered_total",
                       "Events a user transformation dropped (also counted in filtered_total)",
                       METRIC_COUNTER, "");
    transformer_metrics(m, "user", &p->ut_metrics);
    p->ut_metrics.retries = metrics_series(m, "pintle_processor_user_transform_retries_total",
                                           "/customTransform requests retried", METRIC_COUNTER, "");
    p->ut_metrics.splits =
        metrics_series(m, "pintle_processor_user_transform_splits_total",
                       "/customTransform chunks split in halves", METRIC_COUNTER, "");
    p->m_batches = metrics_series(m, "pintle_processor_batches_total", "Batches committed",
                                  METRIC_COUNTER, "");
    transformer_metrics(m, "destination", &p->tf_metrics);
    p->tf_metrics.retries = metrics_series(m, "pintle_processor_transformer_retries_total",
                                           "Transformer requests retried", METRIC_COUNTER, "");
    p->tf_metrics.splits = metrics_series(
        m, "pintle_processor_transformer_splits_total",
        "Chunks split in halves because the answer was over the limit", METRIC_COUNTER, "");
    p->m_fenced = metrics_series(m, "pintle_processor_fenced_total",
                                 "Batches dropped because their commit was fenced (lease lost)",
                                 METRIC_COUNTER, "");
    p->m_partitions = metrics_series(m, "pintle_processor_partitions",
                                     "Partitions this instance claims from", METRIC_GAUGE, "");
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
    free(p->scratch);
    free(p->load_parts);
    free(p->load_epochs);
    free(p->move_parts);
    free(p->move_old);
    free(p->move_new);
    free(p->rt_table);
    free(p->brt_table);
    hmap_deinit(&p->m_dest);
    free(p);
}

void pipeline_set_ops(Pipeline *p, const Ops *ops)
{
    p->ops = ops;
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
    if (p->ut != NULL && p->state == ST_USER_TRANSFORMING)
        tf_batch_abandon(p->ut);
    /* an uncommitted batch is simply claimed again; a COMMIT in flight
     * either happened or did not, and the cursors say which; the caller
     * closes the connection, which rolls back a transaction still open
     * (and so releases the lease rows its fence locked against takeover) */
    if (p->stopped) {
        void (*cb)(void *) = p->stopped;
        p->stopped = NULL;
        p->pool = NULL;
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
    else if (p->state == ST_USER_TRANSFORMING)
        tf_batch_abandon(p->ut);
}

void pipeline_leases_changed(Pipeline *p)
{
    if (p->stopping)
        return;
    /* a batch in flight keeps what it touches until it ends; the rest of
     * what is being given back goes now, and the next cycle sees the rest */
    quiesce(p);
    pipeline_kick(p);
}

bool pipeline_ready(const Pipeline *p, char *detail, size_t size)
{
    bool db = p->pool != NULL && db_pool_connected(p->pool) > 0;
    int usable = 0;
    for (int part = 0; part < p->plan.nparts; part++)
        usable += lease_usable(p->lease, part);
    /* ready with no partition too: an extra instance is a valid standby */
    snprintf(detail, size, "{\"db\":\"%s\",\"partitions\":%d,\"state\":\"%s\"%s}",
             db ? "UP" : "DOWN", usable, state_names[p->state],
             p->stopping ? ",\"stopping\":true" : "");
    return db;
}
