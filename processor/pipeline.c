/* Processor cycle (see pipeline.h).
 *
 * States: IDLE -> (LOCKING -> LOADING) -> CLAIMING -> TRANSFORMING ->
 * (TABLES) -> COMMITTING -> IDLE. One batch at a time; inside a batch, the
 * events for each destination are sent to the transformer in chunks with up
 * to processor.max_inflight requests in flight.
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * processor') on its only connection; other processors wait as standbys. The
 * cursor update is also compare-and-set (check_cursors), so even a processor
 * that lost its lock without noticing cannot commit a duplicate hand-off.
 *
 * Transformer failures (5xx, 408, 429, timeouts, connection errors) are
 * retried with capped backoff forever: the processor pauses, never drops.
 * Per-event failures (statusCode other than 200/298) and whole-request 4xx
 * answers go to dead_letters in the same transaction as the outputs.
 *
 * Order: outputs are written in gw job order, so each (destination, user)
 * keeps the order the gateway committed. */
#include "processor/pipeline.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/jobq.h"
#include "common/jscan.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "processor/events.h"

typedef enum State { ST_IDLE, ST_LOCKING, ST_LOADING, ST_CLAIMING, ST_TRANSFORMING, ST_TABLES, ST_COMMITTING, ST_MAINTAIN } State;

typedef struct Job {
    int64_t job_id;
    int partition;
    char *workspace_id, *source_id, *user_id;
    char *text; /* normalised event, serialised; the tree is freed after routing */
    size_t text_len;
    char *type;
    char *message_id;
} Job;

/* One destination's share of the batch, sent in chunks. */
typedef struct Output {
    int job;     /* index into jobs */
    int seq;     /* destination order within the job */
    char *dest_id;
    char *payload; /* output JSON (rt/batch_rt) or event (dead letter) */
    int status;    /* 200 ok, 298 filtered, else failed */
    char *error;
    bool batch;
} Output;

typedef struct Chunk {
    Pipeline *p;
    char *url;
    Buf body;
    int *jobs; /* job indices in this chunk */
    int *seqs;
    int njobs;
    const WsDestination *dest;
    int attempt;
    struct event *retry_ev;
} Chunk;

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
    bool leader;
    unsigned long lock_gen;
    int nparts;
    int *parts;
    int64_t *cursor;
    int *limit;
    /* current batch */
    Job *jobs;
    int njobs;
    int64_t *new_cursor;
    Output *outs;
    int nouts, capouts;
    Chunk **chunks;
    int nchunks, next_chunk, inflight, chunks_done;
    Buf sql, rt_rows, brt_rows, dead_rows;
    DbCopy copies[3];
    char *rt_table, *brt_table;
    struct timeval tables_at, maintained_at;
    struct event *poll_ev, *backoff_ev;
    int backoff_ms;
    bool kicked;
    int64_t last_claim_rows;
    MetricSeries *m_events, *m_outputs, *m_dead, *m_filtered, *m_batches, *m_tf_seconds,
        *m_tf_retries, *m_leader;
};

static void cycle(Pipeline *p);
static void send_chunks(Pipeline *p);

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

static void reset_batch(Pipeline *p)
{
    for (int i = 0; i < p->njobs; i++) {
        free(p->jobs[i].workspace_id);
        free(p->jobs[i].source_id);
        free(p->jobs[i].user_id);
        free(p->jobs[i].text);
        free(p->jobs[i].type);
        free(p->jobs[i].message_id);
    }
    free(p->jobs);
    p->jobs = NULL;
    p->njobs = 0;
    for (int i = 0; i < p->nouts; i++) {
        free(p->outs[i].dest_id);
        free(p->outs[i].payload);
        free(p->outs[i].error);
    }
    p->nouts = 0;
    for (int i = 0; i < p->nchunks; i++) {
        Chunk *c = p->chunks[i];
        if (c->retry_ev)
            event_free(c->retry_ev);
        buf_deinit(&c->body);
        free(c->url);
        free(c->jobs);
        free(c->seqs);
        free(c);
    }
    free(p->chunks);
    p->chunks = NULL;
    p->nchunks = p->next_chunk = p->inflight = p->chunks_done = 0;
}

static void go_idle(Pipeline *p, int delay_ms)
{
    p->state = ST_IDLE;
    if (p->stopping) {
        if (p->stopped) {
            void (*cb)(void *) = p->stopped;
            p->stopped = NULL;
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

static int cmp_out(const void *a, const void *b)
{
    const Output *x = a, *y = b;
    if (x->job != y->job)
        return x->job < y->job ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static void on_committed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "commit", err);
        return;
    }
    int rt = 0, brt = 0, dead = 0, filtered = 0;
    HMap hinted;
    hmap_init(&hinted);
    for (int i = 0; i < p->nouts; i++) {
        Output *o = &p->outs[i];
        if (o->status == 200) {
            if (o->batch)
                brt++;
            else
                rt++;
            if (hmap_get(&hinted, o->dest_id) == NULL) {
                hmap_put(&hinted, o->dest_id, o);
                char topic[256];
                snprintf(topic, sizeof topic, "%s:%s", o->batch ? "batch_rt" : "rt", o->dest_id);
                hint_pub_send(o->batch ? p->batch_hints : p->rt_hints, topic);
            }
        } else if (o->status == 298) {
            filtered++;
        } else {
            dead++;
        }
    }
    hmap_deinit(&hinted);
    metrics_inc(p->m_events, p->njobs);
    metrics_inc(p->m_outputs, rt + brt);
    metrics_inc(p->m_dead, dead);
    metrics_inc(p->m_filtered, filtered);
    metrics_inc(p->m_batches, 1);
    log_debug("batch_committed", "jobs=%d rt=%d batch_rt=%d dead=%d filtered=%d", p->njobs, rt,
              brt, dead, filtered);
    memcpy(p->cursor, p->new_cursor, sizeof(int64_t) * (size_t)p->nparts);
    p->backoff_ms = 0;
    reset_batch(p);
    /* a full claim means more is probably waiting: go again at once */
    go_idle(p, p->last_claim_rows > 0 ? 0 : p->cfg->processor.poll_interval_ms);
}

static void commit(Pipeline *p, DbConn *c)
{
    qsort(p->outs, (size_t)p->nouts, sizeof(Output), cmp_out);
    buf_reset(&p->rt_rows);
    buf_reset(&p->brt_rows);
    buf_reset(&p->dead_rows);
    int *rt_parts = xmalloc(sizeof(int) * (size_t)(p->nouts + 1));
    int *brt_parts = xmalloc(sizeof(int) * (size_t)(p->nouts + 1));
    int nrt = 0, nbrt = 0;
    for (int i = 0; i < p->nouts; i++) {
        Output *o = &p->outs[i];
        Job *j = &p->jobs[o->job];
        if (o->status == 200) {
            JobRow r = {j->partition, j->workspace_id, j->source_id, o->dest_id, j->user_id,
                        o->payload, strlen(o->payload)};
            jobq_copy_row(o->batch ? &p->brt_rows : &p->rt_rows, &r);
            if (o->batch)
                brt_parts[nbrt++] = j->partition;
            else
                rt_parts[nrt++] = j->partition;
        } else if (o->status != 298) {
            DeadLetter dl = {"gw", j->job_id, "processor", j->partition, j->workspace_id,
                             j->source_id, o->dest_id, j->user_id, o->status,
                             o->error ? o->error : "transformation failed", NULL, o->payload, 1};
            jobq_copy_dead_letter(&p->dead_rows, &dl);
        }
    }
    nrt = jobq_sort_partitions(rt_parts, nrt);
    nbrt = jobq_sort_partitions(brt_parts, nbrt);
    buf_reset(&p->sql);
    buf_puts(&p->sql, "BEGIN;");
    int nc = 0;
    if (nrt > 0) {
        jobq_format_write(&p->sql, JOBQ_RT, p->rt_table, rt_parts, nrt, false);
        p->copies[nc++] = (DbCopy){p->rt_rows.data, p->rt_rows.len};
    }
    if (nbrt > 0) {
        jobq_format_write(&p->sql, JOBQ_BATCH_RT, p->brt_table, brt_parts, nbrt, false);
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
        char **slot = strcmp(q, "rt") == 0 ? &p->rt_table : strcmp(q, "batch_rt") == 0 ? &p->brt_table : NULL;
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
        if (db_exec(c, "SELECT queue, table_name FROM datasets d WHERE idx ="
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

/* ---- transformer ---- */

static void add_output(Pipeline *p, int job, int seq, const WsDestination *d, char *payload,
                       int status, const char *error)
{
    if (p->nouts == p->capouts) {
        p->capouts = p->capouts ? p->capouts * 2 : 256;
        p->outs = xrealloc(p->outs, sizeof(Output) * (size_t)p->capouts);
    }
    Output *o = &p->outs[p->nouts++];
    o->job = job;
    o->seq = seq;
    o->dest_id = xstrdup(d->id);
    o->payload = payload;
    o->status = status;
    o->error = error ? xstrdup(error) : NULL;
    o->batch = d->batch;
}

static int find_job(Pipeline *p, int64_t id)
{
    int lo = 0, hi = p->njobs - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (p->jobs[mid].job_id == id)
            return mid;
        if (p->jobs[mid].job_id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static void chunk_finished(Pipeline *p, Chunk *c)
{
    p->inflight--;
    p->chunks_done++;
    if (p->chunks_done == p->nchunks)
        all_transformed(p, NULL);
    else
        send_chunks(p);
}

/* Every event of the chunk fails with the same status (whole-request 4xx). */
static void chunk_fail_all(Pipeline *p, Chunk *c, int status, const char *error)
{
    for (int i = 0; i < c->njobs; i++) {
        Job *j = &p->jobs[c->jobs[i]];
        add_output(p, c->jobs[i], c->seqs[i], c->dest, xstrdup(j->text),
                   status, error);
    }
}

/* The answer is picked apart with jscan: each output is kept as the exact
 * JSON text the transformer produced, without building a tree. */
static void parse_answer(Pipeline *p, Chunk *c, const char *body, size_t len)
{
    JSpan doc = jscan_doc(body, len);
    JIter it;
    if (!jscan_array(doc, &it)) {
        chunk_fail_all(p, c, 500, "transformer answer is not a JSON array");
        return;
    }
    bool *answered = xcalloc((size_t)c->njobs, sizeof(bool));
    Buf err;
    buf_init(&err);
    JSpan item;
    while (jscan_next_element(&it, &item)) {
        JSpan md, jid, sc, out, e;
        int64_t job_id = -1, status = 200;
        if (jscan_get(item, "metadata", &md)) {
            JIter ai;
            /* router-style answers carry a list of metadata */
            if (jscan_array(md, &ai) && !jscan_next_element(&ai, &md))
                md.n = 0;
            if (jscan_get(md, "jobId", &jid))
                jscan_int(jid, &job_id);
        }
        int idx = job_id >= 0 ? find_job(p, job_id) : -1;
        int slot = -1;
        for (int k = 0; idx >= 0 && k < c->njobs; k++)
            if (c->jobs[k] == idx) {
                slot = k;
                break;
            }
        if (slot < 0) {
            log_warn("transformer_unknown_job", "destination_id=%s job_id=%" PRId64, c->dest->id,
                     job_id);
            continue;
        }
        answered[slot] = true;
        if (jscan_get(item, "statusCode", &sc))
            jscan_int(sc, &status);
        bool has_out = jscan_get(item, "output", &out) && jscan_type(out) == 'o';
        if (status == 200 && has_out) {
            add_output(p, idx, c->seqs[slot], c->dest, xstrndup(out.p, out.n), 200, NULL);
        } else if (status == 298) {
            add_output(p, idx, c->seqs[slot], c->dest, xstrdup(""), 298, NULL);
        } else {
            if (status == 200)
                status = 500; /* 200 without an output object */
            buf_reset(&err);
            if (!jscan_get(item, "error", &e) || !jscan_string(e, &err) || err.len == 0) {
                buf_reset(&err);
                buf_puts(&err, "transformation failed");
            }
            add_output(p, idx, c->seqs[slot], c->dest, xstrdup(p->jobs[idx].text), (int)status,
                       err.data);
        }
    }
    if (it.failed)
        log_warn("transformer_answer_malformed", "destination_id=%s", c->dest->id);
    buf_deinit(&err);
    for (int k = 0; k < c->njobs; k++)
        if (!answered[k])
            add_output(p, c->jobs[k], c->seqs[k], c->dest, xstrdup(p->jobs[c->jobs[k]].text), 500,
                       "event missing from the transformer's answer");
    free(answered);
}

static void start_chunk(Pipeline *p, Chunk *c);

static void on_chunk_retry(evutil_socket_t fd, short what, void *arg)
{
    Chunk *c = arg;
    start_chunk(c->p, c);
}

static void on_transformed(void *arg, const HttpcResponse *r)
{
    Chunk *c = arg;
    Pipeline *p = c->p;
    metrics_observe(p->m_tf_seconds, r->seconds);
    bool retry = r->status == 0 || r->status >= 500 || r->status == 408 || r->status == 429;
    if (retry && !p->stopping) {
        c->attempt++;
        int ms = 100;
        for (int i = 1; i < c->attempt && ms < p->cfg->processor.retry_max_backoff_ms; i++)
            ms *= 2;
        if (ms > p->cfg->processor.retry_max_backoff_ms)
            ms = p->cfg->processor.retry_max_backoff_ms;
        char q[600];
        log_warn("transformer_retry", "destination_id=%s attempt=%d status=%ld backoff_ms=%d error=%s",
                 c->dest->id, c->attempt, r->status, ms,
                 log_quote(q, sizeof q, r->error ? r->error : r->body));
        metrics_inc(p->m_tf_retries, 1);
        if (c->retry_ev == NULL)
            c->retry_ev = evtimer_new(p->base, on_chunk_retry, c);
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(c->retry_ev, &tv);
        return;
    }
    if (retry) {
        /* stopping: abandon the batch uncommitted; it is claimed again after restart */
        p->inflight--;
        if (p->inflight == 0) {
            reset_batch(p);
            go_idle(p, 0);
        }
        return;
    }
    if (r->status == 200) {
        parse_answer(p, c, r->body, r->body_len);
    } else {
        char err[300];
        snprintf(err, sizeof err, "transformer answered %ld: %.200s", r->status, r->body);
        log_warn("transformer_rejected", "destination_id=%s status=%ld events=%d", c->dest->id,
                 r->status, c->njobs);
        chunk_fail_all(p, c, (int)r->status, err);
    }
    chunk_finished(p, c);
}

static void start_chunk(Pipeline *p, Chunk *c)
{
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    HttpcRequest req = {"POST", c->url, headers, c->body.data, c->body.len,
                        p->cfg->processor.transformer_timeout_ms, .max_response_bytes = 0,
                        .keep_prefix = false};
    if (httpc_start(p->http, &req, on_transformed, c) < 0) {
        HttpcResponse r = {.status = 0, .curl_code = -1, .error = "could not start request",
                           .body = ""};
        on_transformed(c, &r);
    }
}

static void send_chunks(Pipeline *p)
{
    while (p->next_chunk < p->nchunks && p->inflight < p->cfg->processor.max_inflight) {
        Chunk *c = p->chunks[p->next_chunk++];
        p->inflight++;
        start_chunk(p, c);
    }
}

/* The destination object in RudderStack's capitalised form. */
static void format_destination(Buf *b, const WsSource *s, const WsDestination *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ID", json_object_new_string(d->id));
    json_object_object_add(o, "Name", json_object_new_string(d->name));
    json_object *cfg = jsonu_get_ci(d->obj, "config");
    json_object_object_add(o, "Config", cfg ? json_object_get(cfg) : json_object_new_object());
    json_object_object_add(o, "Enabled", json_object_new_boolean(d->enabled));
    json_object_object_add(o, "WorkspaceID", json_object_new_string(s->workspace_id));
    json_object_object_add(o, "IsProcessorEnabled", json_object_new_boolean(d->processor_enabled));
    json_object *def = jsonu_get_ci(d->obj, "destinationDefinition");
    json_object *dd = json_object_new_object();
    json_object_object_add(dd, "ID", json_object_new_string(jsonu_str_ci(def, "id", "")));
    json_object_object_add(dd, "Name", json_object_new_string(d->def_name));
    json_object_object_add(dd, "DisplayName", json_object_new_string(d->def_display_name));
    json_object *dcfg = jsonu_get_ci(def, "config");
    json_object_object_add(dd, "Config", dcfg ? json_object_get(dcfg) : json_object_new_object());
    json_object_object_add(o, "DestinationDefinition", dd);
    json_object *tr = jsonu_get_ci(d->obj, "transformations");
    json_object_object_add(o, "Transformations", tr ? json_object_get(tr) : json_object_new_array());
    buf_puts(b, jsonu_to_string(o, NULL));
    json_object_put(o);
}

typedef struct DestChunks {
    const WsDestination *d;
    char *dest_json;
    Chunk *open;
} DestChunks;

/* Adds job i (its tree is ev) to the chunks of every destination it goes to. */
static void route_job(Pipeline *p, int i, json_object *ev, HMap *by_dest)
{
    const Workspace *ws = ws_watcher_get(p->ws);
    int chunk_max = p->cfg->processor.transform_chunk;
    {
        Job *j = &p->jobs[i];
        const WsSource *s = ws_source_by_id(ws, j->source_id);
        if (s == NULL)
            return;
        int seq = 0;
        for (int k = 0; k < s->ndests; k++) {
            const WsDestination *d = &s->dests[k];
            if (!events_dest_wanted(d, ev, j->type))
                continue;
            seq++;
            if (d->batch) {
                /* object storage and warehouses take the event as it is */
                add_output(p, i, seq, d, xstrndup(j->text, j->text_len), 200, NULL);
                continue;
            }
            char key[512];
            snprintf(key, sizeof key, "%s/%s", s->id, d->id);
            DestChunks *dc = hmap_get(by_dest, key);
            if (dc == NULL) {
                dc = xcalloc(1, sizeof(*dc));
                dc->d = d;
                Buf b;
                buf_init(&b);
                format_destination(&b, s, d);
                dc->dest_json = buf_take(&b, NULL);
                hmap_put(by_dest, key, dc);
            }
            if (dc->open == NULL || dc->open->njobs >= chunk_max) {
                Chunk *c = xcalloc(1, sizeof(*c));
                c->p = p;
                c->dest = d;
                buf_init(&c->body);
                buf_putc(&c->body, '[');
                c->url = xasprintf("%s/v0/destinations/%s", p->cfg->processor.transformer_url,
                                   d->def_name);
                for (char *q = c->url + strlen(p->cfg->processor.transformer_url); *q; q++)
                    if (*q >= 'A' && *q <= 'Z')
                        *q = (char)(*q - 'A' + 'a');
                c->jobs = xmalloc(sizeof(int) * (size_t)chunk_max);
                c->seqs = xmalloc(sizeof(int) * (size_t)chunk_max);
                p->chunks = xrealloc(p->chunks, sizeof(Chunk *) * (size_t)(p->nchunks + 1));
                p->chunks[p->nchunks++] = c;
                dc->open = c;
            }
            Chunk *c = dc->open;
            if (c->njobs > 0)
                buf_putc(&c->body, ',');
            buf_puts(&c->body, "{\"message\":");
            buf_append(&c->body, j->text, j->text_len);
            buf_printf(&c->body, ",\"metadata\":{\"jobId\":%" PRId64 ",\"sourceId\":", j->job_id);
            jsonu_put_string(&c->body, s->id);
            buf_puts(&c->body, ",\"destinationId\":");
            jsonu_put_string(&c->body, d->id);
            buf_puts(&c->body, ",\"workspaceId\":");
            jsonu_put_string(&c->body, j->workspace_id);
            buf_puts(&c->body, ",\"userId\":");
            jsonu_put_string(&c->body, j->user_id);
            buf_puts(&c->body, ",\"destinationType\":");
            jsonu_put_string(&c->body, d->def_name);
            buf_puts(&c->body, ",\"eventType\":");
            jsonu_put_string(&c->body, j->type);
            buf_puts(&c->body, ",\"messageId\":");
            jsonu_put_string(&c->body, j->message_id ? j->message_id : "");
            buf_puts(&c->body, "},\"destination\":");
            buf_puts(&c->body, dc->dest_json);
            buf_putc(&c->body, '}');
            c->jobs[c->njobs] = i;
            c->seqs[c->njobs] = seq;
            c->njobs++;
        }
    }
}

static void finish_routing(Pipeline *p, HMap *by_dest)
{
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(by_dest, &it, &e)) {
        DestChunks *dc = e->value;
        free(dc->dest_json);
        free(dc);
    }
    hmap_deinit(by_dest);
    for (int i = 0; i < p->nchunks; i++)
        buf_putc(&p->chunks[i]->body, ']');
}

/* ---- claim ---- */

static void on_claimed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Pipeline *p = arg;
    if (err != NULL) {
        db_failed(p, "claim", err);
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
    int64_t now = now_ms();
    HMap by_dest;
    hmap_init(&by_dest);
    for (int i = 0; i < n; i++) {
        Job *j = &p->jobs[i];
        j->job_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        j->partition = atoi(PQgetvalue(res, i, 1));
        j->workspace_id = xstrdup(PQgetvalue(res, i, 2));
        j->source_id = xstrdup(PQgetvalue(res, i, 3));
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
            route_job(p, i, ev, &by_dest);
        } else {
            j->text = xstrdup(payload);
            j->text_len = strlen(payload);
            log_warn("job_unparsable", "job_id=%" PRId64, j->job_id);
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
    finish_routing(p, &by_dest);
    p->state = ST_TRANSFORMING;
    if (p->nchunks == 0) {
        all_transformed(p, c);
        return;
    }
    send_chunks(p);
}

static void claim(Pipeline *p, DbConn *c)
{
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
    if (db_exec(c, "SELECT partition, last_job_id FROM cursors WHERE stage = 'processor'"
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
        if (db_exec(c, "SELECT pg_try_advisory_lock(hashtext('pintle.stage.processor'))", -1,
                    NULL, NULL, 0, on_locked, p) < 0) {
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
    gettimeofday(&p->maintained_at, NULL);
    p->poll_ev = evtimer_new(base, on_poll, p);
    p->m_events = metrics_series(m, "pintle_processor_events_total", "gw jobs processed", METRIC_COUNTER, "");
    p->m_outputs = metrics_series(m, "pintle_processor_outputs_total", "rt and batch_rt jobs written", METRIC_COUNTER, "");
    p->m_dead = metrics_series(m, "pintle_processor_dead_letters_total", "Events the transformer rejected", METRIC_COUNTER, "");
    p->m_filtered = metrics_series(m, "pintle_processor_filtered_total", "Events the transformer filtered (298)", METRIC_COUNTER, "");
    p->m_batches = metrics_series(m, "pintle_processor_batches_total", "Batches committed", METRIC_COUNTER, "");
    p->m_tf_seconds = metrics_series(m, "pintle_processor_transformer_request_duration_seconds", "Transformer request latency", METRIC_HISTOGRAM, "");
    p->m_tf_retries = metrics_series(m, "pintle_processor_transformer_retries_total", "Transformer requests retried", METRIC_COUNTER, "");
    p->m_leader = metrics_series(m, "pintle_processor_active", "1 when this instance holds the processor lock", METRIC_GAUGE, "");
    event_active(p->poll_ev, 0, 0);
    return p;
}

void pipeline_destroy(Pipeline *p)
{
    if (p == NULL)
        return;
    reset_batch(p);
    free(p->outs);
    buf_deinit(&p->sql);
    buf_deinit(&p->rt_rows);
    buf_deinit(&p->brt_rows);
    buf_deinit(&p->dead_rows);
    event_free(p->poll_ev);
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
    /* waiting on the transformer: abandon the batch (not committed) */
    if (p->state == ST_TRANSFORMING) {
        for (int i = 0; i < p->nchunks; i++)
            if (p->chunks[i]->retry_ev && evtimer_pending(p->chunks[i]->retry_ev, NULL)) {
                evtimer_del(p->chunks[i]->retry_ev);
                p->inflight--;
            }
        if (p->inflight == 0) {
            reset_batch(p);
            go_idle(p, 0);
        }
    }
}

bool pipeline_ready(const Pipeline *p, char *detail, size_t size)
{
    bool db = db_pool_connected(p->pool) > 0;
    snprintf(detail, size, "{\"db\":\"%s\",\"active\":%s,\"state\":%d}", db ? "UP" : "DOWN",
             p->leader ? "true" : "false", (int)p->state);
    return db;
}
