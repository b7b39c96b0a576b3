/* Processor cycle (see pipeline.h).
 *
 * States: IDLE -> (LOCKING -> LOADING) -> CLAIMING -> TRANSFORMING ->
 * (TABLES) -> COMMITTING -> IDLE. One batch at a time; its destination
 * transforms run in processor/transform.c, its outputs are collected in
 * processor/outputs.c.
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * processor') on its only connection; other processors wait as standbys. The
 * cursor update is also compare-and-set (check_cursors), so even a processor
 * that lost its lock without noticing cannot commit a duplicate hand-off.
 *
 * Snapshot: a claimed batch is routed with one workspace snapshot, held
 * (ws_watcher_ref) until the batch is reset, because its chunks and outputs
 * point into it; a reload meanwhile applies from the next batch on.
 *
 * Nothing consumed disappears: every gw job either yields outputs (rt /
 * batch_rt jobs, filtered events) or dead letters, written with the gw
 * cursors in one transaction. Dead letters of the processor: the
 * transformer's per-event rejections and whole-request 4xx answers, a
 * source missing from the snapshot, a payload that is not a JSON object, an
 * event without a type, a destination with a user transformation (not run
 * yet: the event is not sent untransformed), an answer too large for one
 * event. Each is counted by reason. A gw job with destination_id set is a
 * replayed dead letter (pintlectl replay): it is routed to that one
 * destination only.
 *
 * Order: outputs are written in gw job order, then destination order, then
 * the order of the transformer's answer (outputs_order), so each
 * (destination, user) keeps the order the gateway committed.
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
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "processor/events.h"
#include "processor/outputs.h"
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

typedef struct Job {
    int64_t job_id;
    int partition;
    char *workspace_id, *source_id, *user_id;
    char *dest_id; /* a replayed job's one destination, else NULL */
    char *text;    /* normalised event, serialised; the tree is freed after routing */
    size_t text_len;
    char *type;
    char *message_id;
} Job;

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
    int nparts;
    int *parts;
    int64_t *cursor;
    int *limit;
    /* current batch */
    const Workspace *snap; /* held for the batch */
    Job *jobs;
    int njobs;
    int64_t *new_cursor;
    OutputList outs;
    TfBatch *tf;
    TfMetrics tf_metrics;
    Buf sql, rt_rows, brt_rows, dead_rows;
    DbCopy copies[3];
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
    outputs_reset(&p->outs);
    for (int i = 0; i < p->njobs; i++) {
        free(p->jobs[i].workspace_id);
        free(p->jobs[i].source_id);
        free(p->jobs[i].user_id);
        free(p->jobs[i].dest_id);
        free(p->jobs[i].text);
        free(p->jobs[i].type);
        free(p->jobs[i].message_id);
    }
    free(p->jobs);
    p->jobs = NULL;
    p->njobs = 0;
    ws_unref(p->snap);
    p->snap = NULL;
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
    int rt = 0, brt = 0, dead = 0, filtered = 0;
    int dead_by[DEAD_NREASONS] = {0};
    HMap hinted;
    hmap_init(&hinted);
    for (int i = 0; i < p->outs.n; i++) {
        const Output *o = &p->outs.v[i];
        switch (o->kind) {
        case OUTPUT_RT:
        case OUTPUT_BATCH_RT: {
            bool batch = o->kind == OUTPUT_BATCH_RT;
            if (batch)
                brt++;
            else
                rt++;
            char topic[256];
            snprintf(topic, sizeof topic, "%s:%s", batch ? "batch_rt" : "rt", o->dest_id);
            if (hmap_get(&hinted, topic) == NULL) {
                hmap_put(&hinted, topic, (void *)o);
                hint_pub_send(batch ? p->batch_hints : p->rt_hints, topic);
            }
            break;
        }
        case OUTPUT_FILTERED:
            filtered++;
            break;
        case OUTPUT_DEAD:
            dead++;
            dead_by[o->reason]++;
            break;
        }
    }
    hmap_deinit(&hinted);
    metrics_inc(p->m_events, p->njobs);
    metrics_inc(p->m_outputs, rt + brt);
    for (int r = 0; r < DEAD_NREASONS; r++)
        if (dead_by[r] > 0) {
            metrics_inc(p->m_dead[r], dead_by[r]);
            /* one line per batch and reason: bounded, however many events */
            log_warn("dead_lettered", "reason=%s count=%d", outputs_reason_label((DeadReason)r),
                     dead_by[r]);
        }
    metrics_inc(p->m_filtered, filtered);
    metrics_inc(p->m_batches, 1);
    log_debug("batch_committed", "jobs=%d rt=%d batch_rt=%d dead=%d filtered=%d", p->njobs, rt, brt,
              dead, filtered);
    memcpy(p->cursor, p->new_cursor, sizeof(int64_t) * (size_t)p->nparts);
    p->backoff_ms = 0;
    reset_batch(p);
    /* a full claim means more is probably waiting: go again at once */
    go_idle(p, p->last_claim_rows > 0 ? 0 : p->cfg->processor.poll_interval_ms);
}

static void commit(Pipeline *p, DbConn *c)
{
    const int *order = outputs_order(&p->outs, p->njobs);
    buf_reset(&p->rt_rows);
    buf_reset(&p->brt_rows);
    buf_reset(&p->dead_rows);
    int *rt_parts = xmalloc(sizeof(int) * (size_t)(p->outs.n + 1));
    int *brt_parts = xmalloc(sizeof(int) * (size_t)(p->outs.n + 1));
    int nrt = 0, nbrt = 0;
    for (int i = 0; i < p->outs.n; i++) {
        const Output *o = &p->outs.v[order[i]];
        const Job *j = &p->jobs[o->job];
        if (o->kind == OUTPUT_RT || o->kind == OUTPUT_BATCH_RT) {
            bool batch = o->kind == OUTPUT_BATCH_RT;
            JobRow r = {j->partition, j->workspace_id, j->source_id,
                        o->dest_id,   j->user_id,      outputs_payload(&p->outs, o),
                        o->len};
            jobq_copy_row(batch ? &p->brt_rows : &p->rt_rows, &r);
            if (batch)
                brt_parts[nbrt++] = j->partition;
            else
                rt_parts[nrt++] = j->partition;
        } else if (o->kind == OUTPUT_DEAD) {
            DeadLetter dl = {.queue = "gw",
                             .job_id = j->job_id,
                             .stage = "processor",
                             .partition = j->partition,
                             .workspace_id = j->workspace_id,
                             .source_id = j->source_id,
                             .destination_id = o->dest_id,
                             .user_id = j->user_id,
                             .status_code = o->status,
                             .reason = o->error,
                             .payload = o->dead_payload,
                             .attempts = 1};
            jobq_copy_dead_letter(&p->dead_rows, &dl);
        }
    }
    nrt = jobq_sort_partitions(rt_parts, nrt);
    nbrt = jobq_sort_partitions(brt_parts, nbrt);
    buf_reset(&p->sql);
    buf_puts(&p->sql, "BEGIN;");
    int nc = 0;
    if (nrt > 0) {
        jobq_format_write(&p->sql, JOBQ_RT, p->rt_table, rt_parts, nrt, false, false);
        p->copies[nc++] = (DbCopy){p->rt_rows.data, p->rt_rows.len};
    }
    if (nbrt > 0) {
        jobq_format_write(&p->sql, JOBQ_BATCH_RT, p->brt_table, brt_parts, nbrt, false, false);
        p->copies[nc++] = (DbCopy){p->brt_rows.data, p->brt_rows.len};
    }
    if (p->dead_rows.len > 0) {
        buf_puts(&p->sql, JOBQ_SQL_COPY_DEAD_LETTERS);
        p->copies[nc++] = (DbCopy){p->dead_rows.data, p->dead_rows.len};
    }
    free(rt_parts);
    free(brt_parts);
    /* advance only the partitions this batch read */
    int n = 0;
    int *parts = xmalloc(sizeof(int) * (size_t)p->nparts);
    int64_t *olds = xmalloc(sizeof(int64_t) * (size_t)p->nparts);
    int64_t *news = xmalloc(sizeof(int64_t) * (size_t)p->nparts);
    for (int i = 0; i < p->nparts; i++)
        if (p->new_cursor[i] != p->cursor[i]) {
            parts[n] = p->parts[i];
            olds[n] = p->cursor[i];
            news[n] = p->new_cursor[i];
            n++;
        }
    jobq_format_advance(&p->sql, "processor", parts, olds, news, n);
    free(parts);
    free(olds);
    free(news);
    buf_puts(&p->sql, ";COMMIT");
    p->state = ST_COMMITTING;
    if (db_exec(c, p->sql.data, -1, NULL, p->copies, nc, on_committed, p) < 0) {
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
        log_info("batch_abandoned", "jobs=%d reason=shutdown", p->njobs);
        reset_batch(p);
        go_idle(p, 0);
        return;
    }
    all_transformed(p, NULL);
}

/* ---- routing ---- */

/* A dead letter for the whole job i (no destination, or its replay target). */
static void job_dead(Pipeline *p, int i, const char *dest_id, int status, DeadReason reason,
                     const char *fmt, const char *arg1, const char *arg2)
{
    Buf msg; /* whole ids: a fixed buffer could cut one mid-character */
    buf_init(&msg);
    buf_printf(&msg, fmt, arg1, arg2);
    outputs_add_dead(&p->outs, i, 0, dest_id, status, reason, msg.data, msg.len,
                     p->jobs[i].text);
    buf_deinit(&msg);
}

/* Sends job i (its tree is ev) to every destination it goes to: the
 * transformer's chunks, batch_rt outputs, or dead letters. */
static void route_job(Pipeline *p, int i, json_object *ev)
{
    static const char no_ut[] = "user transformation not supported";
    Job *j = &p->jobs[i];
    const WsSource *s = ws_source_by_id(p->snap, j->source_id);
    if (s == NULL) {
        job_dead(p, i, j->dest_id ? j->dest_id : "", 404, DEAD_UNKNOWN_SOURCE,
                 "source \"%s\" is not in the workspace config", j->source_id, NULL);
        return;
    }
    if (j->type == NULL) {
        job_dead(p, i, j->dest_id ? j->dest_id : "", 400, DEAD_NO_TYPE, "event has no type", NULL,
                 NULL);
        return;
    }
    TfEvent te = {.job = i,
                  .job_id = j->job_id,
                  .text = j->text,
                  .text_len = j->text_len,
                  .workspace_id = j->workspace_id,
                  .user_id = j->user_id,
                  .type = j->type,
                  .message_id = j->message_id};
    bool found = false;
    for (int k = 0; k < s->ndests; k++) {
        const WsDestination *d = &s->dests[k];
        if (j->dest_id != NULL && strcmp(d->id, j->dest_id) != 0)
            continue;
        found = true;
        if (!events_dest_wanted(d, ev, j->type)) {
            if (j->dest_id != NULL) /* a replay must not vanish: say why it stops here */
                job_dead(p, i, d->id, 409, DEAD_UNKNOWN_DESTINATION,
                         "destination \"%s\" no longer takes this event (disabled, type not"
                         " supported or excluded by integrations)",
                         d->id, NULL);
            continue;
        }
        int seq = k + 1;
        if (d->transformation_id != NULL) {
            /* until user transformations run, never send the event on without them */
            outputs_add_dead(&p->outs, i, seq, d->id, 501, DEAD_USER_TRANSFORMATION, no_ut,
                             sizeof no_ut - 1, j->text);
            continue;
        }
        if (d->batch) {
            /* object storage and warehouses take the event as it is */
            outputs_add_job(&p->outs, i, seq, d->id, true, j->text, j->text_len);
            continue;
        }
        te.seq = seq;
        tf_batch_add(p->tf, s, d, &te);
    }
    if (j->dest_id != NULL && !found)
        job_dead(p, i, j->dest_id, 404, DEAD_UNKNOWN_DESTINATION,
                 "destination \"%s\" of source \"%s\" is not in the workspace config", j->dest_id,
                 j->source_id);
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
    memcpy(p->new_cursor, p->cursor, sizeof(int64_t) * (size_t)p->nparts);
    if (n == 0) {
        for (int i = 0; i < p->nparts; i++)
            p->limit[i] = p->cfg->processor.claim_batch / p->nparts / 2 + 4;
        go_idle(p, p->cfg->processor.poll_interval_ms);
        return;
    }
    int base_limit = p->cfg->processor.claim_batch / p->nparts / 2 + 4;
    int *got = xcalloc((size_t)p->nparts, sizeof(int));
    p->jobs = xcalloc((size_t)n, sizeof(Job));
    p->njobs = n;
    p->snap = ws_watcher_ref(p->ws);
    p->tf = tf_batch_create(p->base, &p->cfg->processor, p->http, &p->tf_metrics, &p->outs);
    int64_t now = now_ms();
    for (int i = 0; i < n; i++) {
        Job *j = &p->jobs[i];
        j->job_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        j->partition = atoi(PQgetvalue(res, i, 1));
        j->workspace_id = xstrdup(PQgetvalue(res, i, 2));
        j->source_id = xstrdup(PQgetvalue(res, i, 3));
        const char *dest = PQgetvalue(res, i, 4);
        j->dest_id = dest[0] != '\0' ? xstrdup(dest) : NULL;
        j->user_id = xstrdup(PQgetvalue(res, i, 5));
        const char *payload = PQgetvalue(res, i, 7);
        /* parse, normalise, serialise and route one event at a time, so only
         * one JSON tree is alive: memory is the serialised batch, not trees */
        json_object *ev = json_tokener_parse(payload);
        if (ev != NULL && json_object_is_type(ev, json_type_object)) {
            events_normalize_times(ev, now);
            const char *t = jsonu_str_ci(ev, "type", NULL);
            const char *m = jsonu_str_ci(ev, "messageId", NULL);
            j->type = t ? xstrdup(t) : NULL;
            j->message_id = m ? xstrdup(m) : NULL;
            const char *text = jsonu_to_string(ev, &j->text_len);
            j->text = xstrndup(text, j->text_len);
            route_job(p, i, ev);
        } else {
            j->text_len = (size_t)PQgetlength(res, i, 7);
            j->text = xstrndup(payload, j->text_len);
            log_debug("job_unparsable", "job_id=%" PRId64, j->job_id);
            job_dead(p, i, j->dest_id ? j->dest_id : "", 400, DEAD_UNPARSABLE,
                     "payload is not a JSON object", NULL, NULL);
        }
        json_object_put(ev);
        /* partitions are 0..nparts-1 and listed in order */
        if (j->partition >= 0 && j->partition < p->nparts) {
            p->new_cursor[j->partition] = j->job_id;
            got[j->partition]++;
        }
    }
    /* Partitions that filled their limit get a bigger share next time, but
     * the whole claim stays near claim_batch rows: memory is bounded by it. */
    int full = 0;
    for (int i = 0; i < p->nparts; i++)
        full += got[i] >= p->limit[i];
    int cap = p->cfg->processor.claim_batch / (full > 0 ? full : 1);
    if (cap < base_limit)
        cap = base_limit;
    for (int i = 0; i < p->nparts; i++) {
        if (got[i] >= p->limit[i])
            p->limit[i] = p->limit[i] * 2 > cap ? cap : p->limit[i] * 2;
        else
            p->limit[i] = base_limit;
    }
    free(got);
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
    jobq_format_claim(&p->sql, JOBQ_GW, p->parts, p->cursor, p->nparts, p->limit, 0);
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
    if (n != p->nparts) {
        free(p->parts);
        free(p->cursor);
        free(p->new_cursor);
        free(p->limit);
        p->nparts = n;
        p->parts = xcalloc((size_t)n, sizeof(int));
        p->cursor = xcalloc((size_t)n, sizeof(int64_t));
        p->new_cursor = xcalloc((size_t)n, sizeof(int64_t));
        p->limit = xcalloc((size_t)n, sizeof(int));
    }
    for (int i = 0; i < n; i++) {
        p->parts[i] = atoi(PQgetvalue(res, i, 0));
        p->cursor[i] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        p->limit[i] = p->cfg->processor.claim_batch / n / 2 + 4;
    }
    p->leader = true;
    p->lock_gen = db_conn_generation(c);
    metrics_set(p->m_leader, 1);
    log_info("leader", "stage=processor partitions=%d", n);
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
    buf_init(&p->rt_rows);
    buf_init(&p->brt_rows);
    buf_init(&p->dead_rows);
    outputs_init(&p->outs);
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
    outputs_deinit(&p->outs);
    buf_deinit(&p->sql);
    buf_deinit(&p->rt_rows);
    buf_deinit(&p->brt_rows);
    buf_deinit(&p->dead_rows);
    event_free(p->poll_ev);
    if (p->deadline_ev)
        event_free(p->deadline_ev);
    free(p->parts);
    free(p->cursor);
    free(p->new_cursor);
    free(p->limit);
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
