/* The batchrouter engine (see engine.h).
 *
 * Connections. Every (source, destination) of the workspace config whose
 * destination is a batch type is a Conn; so is any (source, destination)
 * that still has batch_rt jobs but left the config (an orphan: its jobs go
 * to dead letters, replayable). Each Conn runs on its own, one batch at a
 * time, so a slow or failing destination never holds back another.
 *
 * A batch, step by step (sql/009_batchrouter.sql has the SQL side):
 *  1. plan: in one transaction fenced on the usable leased partitions,
 *     batch_plan resumes a journaled batch whose home partition is ours, or
 *     journals a new one (the connection's oldest jobs beyond its cursors,
 *     at most batchrouter.max_events / max_bytes) when it is full or the
 *     connection's upload interval passed. The journal commits before any
 *     upload.
 *  2. read: batch_events gives the batch's events in job order: the same
 *     events, the same bytes after any crash.
 *  3. deliver: object storage gets one gzip JSON Lines object whose key
 *     comes from the batch (its first job's created_at and its batch id), so
 *     a retry overwrites the same object with the same bytes; a warehouse
 *     gets one load with the batch id as load id, on the destination's
 *     worker thread (the loop never blocks).
 *  4. done: batch_done, fenced on the home partition, moves the cursors and
 *     deletes the journal row. A failure is counted in the journal
 *     (batch_failed), logged once per backoff step with its reason, and
 *     retried after a capped exponential backoff (from the journal's
 *     attempts, so it survives restarts); once the first failure is older
 *     than batchrouter.max_retry_minutes (or a WH_ABORT), batch_dead moves
 *     the events to dead letters.
 * A kill -9 anywhere leaves either nothing (before the journal commit) or a
 * journaled batch that the holder of its home partition completes: the same
 * object again, never a second one with the same events.
 *
 * All SQL runs on the stage's one connection, in order, from a small queue.
 * The upload interval is counted from the connection's last upload in this
 * process (from start after a restart). */
#include "batchrouter/engine.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "batchrouter/objstore.h"
#include "batchrouter/whworker.h"
#include "common/jobq.h"
#include "common/jscan.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/wsconfig.h"
#include "common/xalloc.h"

#define LOW_WATER_MS 5000

/* KIND_ARCHIVE: the raw archive of one source's gw events (dest_id ""),
 * sql/013_archive.sql; the same steps as a batch, other SQL functions, and
 * never given up (its events are still in the queue). */
typedef enum ConnKind {
    KIND_OBJECT,
    KIND_WAREHOUSE,
    KIND_ORPHAN,
    KIND_UNSUPPORTED,
    KIND_ARCHIVE
} ConnKind;

typedef struct Conn Conn;
typedef struct Engine Engine;

struct Conn {
    Conn *next;
    Engine *e;
    char *source_id, *dest_id, *workspace_id, *def_name;
    char *config_json; /* as in the workspace config, to notice changes */
    ConnKind kind;
    bool present; /* in the current workspace config */
    bool dirty;   /* the config changed while busy: rebuild when idle */
    ObjTarget target;
    bool target_ok;
    char target_err[256];
    WhWorker *wh;
    bool busy; /* a batch (or its plan) is in flight */
    bool drained; /* an orphan whose last plan found nothing */
    int64_t last_upload_ms;
    int64_t next_try_ms;
    /* the batch in flight */
    char batch_id[40];
    int nevents;
    int64_t first_created_ms;
    int64_t last_created_ms; /* archive batches: part of the key */
    char instance_id[128];   /* archive batches: the planner's, part of the key */
    char *batch_ws, *batch_prefix; /* archive batches: journaled, part of the key */
    bool batch_more;         /* archive: the last batch was full (or resumed): scan again at once */
    bool plan_forced;        /* archive: the plan in flight scans the queue */
    int attempts;
    int home;
    int64_t home_epoch;
    int64_t started_ms;
    int status;      /* of the failed attempt */
    char reason[1024];
    char *response;
};

typedef struct DbOp {
    struct DbOp *next;
    char *sql;
    void (*cb)(Conn *c, PGresult *res, const Err *err);
    Conn *c;
} DbOp;

struct Engine {
    struct event_base *base;
    const Config *cfg;
    const BatchrouterConfig *bc;
    const ArchiveConfig *ac;
    DbPool *pool;
    Lease *lease;
    Httpc *http;
    WsWatcher *ws;
    Conn *conns;
    DbOp *ops_head, *ops_tail;
    bool op_running;
    struct event *tick, *kick_ev, *stop_ev;
    int64_t last_low_water_ms;
    bool low_water_running;
    bool archive_low_water_failing; /* logged once until it works again */
    int *parts; /* room for P */
    bool stopping;
    void (*stop_done)(void *);
    void *stop_arg;
    MetricSeries *m_events, *m_batches, *m_failures, *m_dead, *m_bytes, *m_seconds;
    MetricSeries *m_arch_events, *m_arch_objects, *m_arch_failures, *m_arch_bytes;
    Metrics *m;
};

/* A series of one destination of this stage (families shared with the
 * router: stage in/out, retries, aborts, delivery latency, responses by
 * status class). Looked up per batch, not per event: a hash lookup. */
static MetricSeries *dest_series(Engine *e, const char *name, const char *help, MetricType type,
                                 const char *dest_id, const char *status_class)
{
    char d[300], l[400];
    metrics_format_label(d, sizeof d, "destination", dest_id);
    if (status_class)
        snprintf(l, sizeof l, "%s,status_class=\"%s\"", d, status_class);
    else
        snprintf(l, sizeof l, "stage=\"batchrouter\",%s", d);
    return metrics_series(e->m, name, help, type, l);
}

/* One upload or load answered with status (a warehouse or network failure
 * without an HTTP status counts as 504, as the router's). */
static void count_response(Engine *e, const char *dest_id, int status)
{
    static const char *const classes[4] = {"2xx", "3xx", "4xx", "5xx"};
    int c = (status >= 200 && status < 600 ? status : 504) / 100;
    metrics_inc(dest_series(e, "pintle_deliveries_total",
                            "Delivery attempts by status class (no answer counts as 504)",
                            METRIC_COUNTER, dest_id, classes[c - 2]),
                1);
}

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void lit(Buf *b, const char *s)
{
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_putc(b, '\'');
        buf_putc(b, *s);
    }
    buf_putc(b, '\'');
}

static void cycle(Engine *e);
static void run_ops(void *arg);

/* ---- the SQL queue ---- */

static void enqueue(Engine *e, Conn *c, Buf *sql, void (*cb)(Conn *, PGresult *, const Err *))
{
    DbOp *op = xcalloc(1, sizeof *op);
    op->sql = buf_take(sql, NULL);
    op->cb = cb;
    op->c = c;
    if (e->ops_tail)
        e->ops_tail->next = op;
    else
        e->ops_head = op;
    e->ops_tail = op;
    run_ops(e);
}

static void on_op(void *arg, DbConn *conn, PGresult *res, const Err *err)
{
    Engine *e = arg;
    DbOp *op = e->ops_head;
    e->ops_head = op->next;
    if (e->ops_head == NULL)
        e->ops_tail = NULL;
    e->op_running = false;
    op->cb(op->c, res, err);
    free(op->sql);
    free(op);
    /* the connection is released when this returns; the idle callback runs the next */
}

static void run_ops(void *arg)
{
    Engine *e = arg;
    if (e->op_running || e->ops_head == NULL)
        return;
    DbConn *conn = db_pool_acquire(e->pool);
    if (conn == NULL)
        return;
    e->op_running = true;
    if (db_exec(conn, e->ops_head->sql, -1, NULL, NULL, 0, on_op, e) < 0) {
        e->op_running = false;
        Err err;
        err_set(&err, ERR_DB, "could not send the statement (connection lost)");
        DbOp *op = e->ops_head;
        e->ops_head = op->next;
        if (e->ops_head == NULL)
            e->ops_tail = NULL;
        op->cb(op->c, NULL, &err);
        free(op->sql);
        free(op);
    }
}

/* ---- connections ---- */

static void conn_build(Conn *c, const WsDestination *d)
{
    Engine *e = c->e;
    if (c->target_ok)
        objstore_target_deinit(&c->target);
    c->target_ok = false;
    whworker_destroy(c->wh);
    c->wh = NULL;
    c->target_err[0] = '\0';
    json_object *cfg = d ? jsonu_get_ci(d->obj, "config") : NULL;
    if (c->kind == KIND_ARCHIVE) {
        Err err;
        json_object *acfg = json_tokener_parse(c->config_json ? c->config_json : "{}");
        if (objstore_target_parse(&c->target, c->def_name, acfg, e->bc->s3_endpoint_override,
                                  &err) == 0)
            c->target_ok = true;
        else
            snprintf(c->target_err, sizeof c->target_err, "archive bucket: %s", err.msg);
        json_object_put(acfg);
    } else if (c->kind == KIND_OBJECT) {
        Err err;
        if (objstore_target_parse(&c->target, c->def_name, cfg, e->bc->s3_endpoint_override,
                                  &err) == 0)
            c->target_ok = true;
        else
            snprintf(c->target_err, sizeof c->target_err, "%s", err.msg);
    } else if (c->kind == KIND_WAREHOUSE) {
        Err err;
        const WsSource *src = ws_source_by_id(ws_watcher_get(e->ws), c->source_id);
        WarehouseSettings ws = {e->bc->warehouse_connect_timeout_s,
                                e->bc->warehouse_statement_timeout_ms, src ? src->name : NULL};
        c->wh = whworker_create(e->base, c->config_json ? c->config_json : "{}", &ws, &err);
        if (c->wh == NULL)
            snprintf(c->target_err, sizeof c->target_err, "%s", err.msg);
    }
    c->dirty = false;
}

static Conn *conn_find(Engine *e, const char *source_id, const char *dest_id)
{
    for (Conn *c = e->conns; c; c = c->next)
        if (strcmp(c->source_id, source_id) == 0 && strcmp(c->dest_id, dest_id) == 0)
            return c;
    return NULL;
}

static Conn *conn_add(Engine *e, const char *source_id, const char *dest_id, const char *ws_id,
                      const char *def_name, ConnKind kind)
{
    Conn *c = xcalloc(1, sizeof *c);
    c->e = e;
    c->source_id = xstrdup(source_id);
    c->dest_id = xstrdup(dest_id);
    c->workspace_id = xstrdup(ws_id ? ws_id : "");
    c->def_name = xstrdup(def_name);
    c->kind = kind;
    c->last_upload_ms = now_ms();
    c->next = e->conns;
    e->conns = c;
    return c;
}

static void conn_free(Conn *c)
{
    if (c->target_ok)
        objstore_target_deinit(&c->target);
    whworker_destroy(c->wh);
    free(c->source_id);
    free(c->dest_id);
    free(c->workspace_id);
    free(c->def_name);
    free(c->config_json);
    free(c->response);
    free(c->batch_ws);
    free(c->batch_prefix);
    free(c);
}

static ConnKind kind_of(const char *def_name)
{
    if (objstore_is_type(def_name))
        return KIND_OBJECT;
    if (strcasecmp(def_name, "POSTGRES") == 0)
        return KIND_WAREHOUSE;
    return KIND_UNSUPPORTED;
}

/* Where the workspace's raw archive goes: the bucket type into *type and
 * its config (RudderStack's keys) as JSON text (caller frees), or NULL with
 * *why set when the workspace is not archived. */
static char *archive_bucket(const Engine *e, const Workspace *ws, const char **type,
                            const char **why)
{
    *why = NULL;
    if (!ws->gateway_dumps || !e->ac->enabled) {
        *why = e->ac->enabled ? "gatewayDumps is off" : "archive.enabled is false";
        return NULL;
    }
    if (ws->use_self_storage) {
        *type = ws->storage_bucket_type;
        if ((*type)[0] == '\0' || ws->storage_bucket_config == NULL) {
            *why = "useSelfStorage without a storageBucket type and config";
            return NULL;
        }
        /* a type we cannot write to would hold the gw datasets for ever */
        if (!objstore_is_type(*type)) {
            *why = "storageBucket type is not S3, MINIO or DIGITAL_OCEAN_SPACES";
            return NULL;
        }
        return xstrdup(
            json_object_to_json_string_ext(ws->storage_bucket_config, JSON_C_TO_STRING_PLAIN));
    }
    *type = e->ac->storage_provider;
    if ((*type)[0] == '\0') {
        *why = "no useSelfStorage bucket and no archive.storage_provider";
        return NULL;
    }
    if (!objstore_is_type(*type)) {
        *why = "archive.storage_provider is not S3, MINIO or DIGITAL_OCEAN_SPACES";
        return NULL;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "bucketName", json_object_new_string(e->ac->bucket));
    json_object_object_add(o, "prefix", json_object_new_string(e->ac->prefix));
    json_object_object_add(o, "endPoint", json_object_new_string(e->ac->endpoint));
    json_object_object_add(o, "accessKeyID", json_object_new_string(e->ac->access_key_id));
    json_object_object_add(o, "accessKey", json_object_new_string(e->ac->secret_access_key));
    json_object_object_add(o, "secretAccessKey",
                           json_object_new_string(e->ac->secret_access_key));
    json_object_object_add(o, "region", json_object_new_string(e->ac->region));
    json_object_object_add(o, "useSSL", json_object_new_boolean(e->ac->use_ssl));
    char *r = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return r;
}

/* One archive connection per source of an archived workspace. */
static void sync_archive(Engine *e, const Workspace *ws)
{
    const char *type = "", *why = NULL;
    char *cj = ws ? archive_bucket(e, ws, &type, &why) : NULL;
    if (cj == NULL && ws != NULL && ws->gateway_dumps && e->ac->enabled) {
        char q[256];
        log_warn("archive_not_configured", "sources=%d reason=%s action=not_archived",
                 ws->nsources, log_quote(q, sizeof q, why));
    }
    for (int i = 0; cj && i < ws->nsources; i++) {
        const WsSource *s = &ws->sources[i];
        Conn *c = conn_find(e, s->id, "");
        if (c == NULL) {
            c = conn_add(e, s->id, "", s->workspace_id, type, KIND_ARCHIVE);
            c->config_json = xstrdup(cj);
            conn_build(c, NULL);
            log_info("archive_added", "source_id=%s workspace_id=%s type=%s", s->id,
                     s->workspace_id, type);
        } else if (strcmp(c->config_json, cj) != 0 || strcasecmp(c->def_name, type) != 0 ||
                   strcmp(c->workspace_id, s->workspace_id) != 0) {
            free(c->config_json);
            c->config_json = xstrdup(cj);
            free(c->def_name);
            c->def_name = xstrdup(type);
            free(c->workspace_id);
            c->workspace_id = xstrdup(s->workspace_id);
            if (c->busy)
                c->dirty = true;
            else
                conn_build(c, NULL);
            c->next_try_ms = 0;
            log_info("archive_changed", "source_id=%s type=%s", s->id, type);
        }
        c->present = true;
    }
    free(cj);
}

/* Brings the connections in line with the current workspace config. */
static void sync_conns(Engine *e)
{
    const Workspace *ws = ws_watcher_get(e->ws);
    for (Conn *c = e->conns; c; c = c->next)
        c->present = false;
    sync_archive(e, ws);
    for (int i = 0; ws && i < ws->nsources; i++) {
        const WsSource *s = &ws->sources[i];
        for (int k = 0; k < s->ndests; k++) {
            const WsDestination *d = &s->dests[k];
            if (!d->batch)
                continue;
            json_object *cfg = jsonu_get_ci(d->obj, "config");
            const char *cj = cfg ? json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PLAIN)
                                 : "{}";
            Conn *c = conn_find(e, s->id, d->id);
            ConnKind kind = kind_of(d->def_name);
            if (c == NULL) {
                c = conn_add(e, s->id, d->id, s->workspace_id, d->def_name, kind);
                c->config_json = xstrdup(cj);
                conn_build(c, d);
                log_info("connection_added", "source_id=%s destination_id=%s type=%s", s->id,
                         d->id, d->def_name);
            } else if (c->kind != kind || c->config_json == NULL ||
                       strcmp(c->config_json, cj) != 0) {
                free(c->config_json);
                c->config_json = xstrdup(cj);
                c->kind = kind;
                free(c->def_name);
                c->def_name = xstrdup(d->def_name);
                if (c->busy)
                    c->dirty = true;
                else
                    conn_build(c, d);
                c->next_try_ms = 0; /* a fixed config retries at once */
                log_info("connection_changed", "source_id=%s destination_id=%s type=%s", s->id,
                         d->id, d->def_name);
            }
            c->present = true;
        }
    }
    for (Conn *c = e->conns; c; c = c->next)
        if (!c->present && c->kind != KIND_ORPHAN && c->kind != KIND_ARCHIVE && !c->busy) {
            c->kind = KIND_ORPHAN;
            conn_build(c, NULL);
            log_info("connection_removed", "source_id=%s destination_id=%s action=dead_letter",
                     c->source_id, c->dest_id);
        }
}

static const WsDestination *conn_dest(Engine *e, const Conn *c)
{
    const Workspace *ws = ws_watcher_get(e->ws);
    const WsSource *s = ws ? ws_source_by_id(ws, c->source_id) : NULL;
    return s ? ws_destination(s, c->dest_id) : NULL;
}

/* ---- one batch ---- */

static void batch_end(Conn *c, bool more)
{
    Engine *e = c->e;
    c->busy = false;
    free(c->response);
    c->response = NULL;
    if (!c->present && c->kind != KIND_ORPHAN && c->kind != KIND_ARCHIVE) {
        c->kind = KIND_ORPHAN;
        c->dirty = true;
    }
    if (c->dirty)
        conn_build(c, c->kind == KIND_ORPHAN || c->kind == KIND_ARCHIVE ? NULL : conn_dest(e, c));
    if (more)
        c->next_try_ms = 0;
    if (e->stopping) {
        bool any = false;
        for (Conn *x = e->conns; x; x = x->next)
            any |= x->busy;
        if (!any)
            event_active(e->stop_ev, 0, 0);
        return;
    }
    engine_leases_changed(e);
    if (more)
        event_active(e->kick_ev, 0, 0);
}

static int64_t backoff_ms(const Engine *e, int attempts)
{
    int64_t b = e->bc->retry_initial_ms;
    for (int i = 1; i < attempts && b < e->bc->retry_max_ms; i++)
        b *= 2;
    return b < e->bc->retry_max_ms ? b : e->bc->retry_max_ms;
}

static int64_t retry_window_ms(const Engine *e)
{
    if (e->bc->max_retry_ms > 0)
        return e->bc->max_retry_ms;
    return (int64_t)e->bc->max_retry_minutes * 60000;
}

static void fence_home(Engine *e, Conn *c, Buf *sql)
{
    int64_t ep = c->home_epoch;
    lease_format_fence_epochs(e->lease, sql, &c->home, &ep, 1);
}

static void on_dead(Conn *c, PGresult *res, const Err *err)
{
    char q[1100];
    if (err != NULL) {
        if (strstr(err->msg, "PB404") == NULL)
            log_warn("batch_dead_letter_failed", "batch_id=%s destination_id=%s error=%s",
                     c->batch_id, c->dest_id, log_quote(q, sizeof q, err->msg));
        c->next_try_ms = now_ms() + c->e->bc->retry_initial_ms;
        batch_end(c, false);
        return;
    }
    metrics_inc(c->e->m_dead, c->nevents);
    metrics_inc(dest_series(c->e, "pintle_aborts_total", METRICS_ABORTS_HELP, METRIC_COUNTER,
                            c->dest_id, NULL),
                c->nevents);
    metrics_inc(dest_series(c->e, "pintle_stage_out_total", METRICS_STAGE_OUT_HELP, METRIC_COUNTER,
                            c->dest_id, NULL),
                c->nevents);
    log_error("batch_aborted",
              "batch_id=%s source_id=%s destination_id=%s events=%d attempts=%d status=%d"
              " reason=%s action=dead_letters",
              c->batch_id, c->source_id, c->dest_id, c->nevents, c->attempts, c->status,
              log_quote(q, sizeof q, c->reason));
    batch_end(c, true);
}

static void give_up(Conn *c)
{
    Engine *e = c->e;
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "BEGIN;");
    fence_home(e, c, &sql);
    buf_printf(&sql, "SELECT batch_dead('%s', %d, ", c->batch_id, c->status);
    lit(&sql, c->reason);
    buf_puts(&sql, ", ");
    if (c->response)
        lit(&sql, c->response);
    else
        buf_puts(&sql, "NULL");
    buf_puts(&sql, "); COMMIT;");
    enqueue(e, c, &sql, on_dead);
}

static void on_failed(Conn *c, PGresult *res, const Err *err)
{
    Engine *e = c->e;
    int64_t since = 0;
    if (err == NULL && res != NULL && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        since = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    c->attempts++;
    int64_t window = retry_window_ms(e);
    int64_t wait = backoff_ms(e, c->attempts);
    char q[1100];
    if (err == NULL && since >= window && c->kind != KIND_ARCHIVE) {
        give_up(c);
        return;
    }
    log_warn(c->kind == KIND_ARCHIVE ? "archive_retry" : "batch_retry",
             "batch_id=%s source_id=%s destination_id=%s events=%d attempt=%d status=%d"
             " backoff_ms=%" PRId64 " failing_ms=%" PRId64 " reason=%s",
             c->batch_id, c->source_id, c->dest_id, c->nevents, c->attempts, c->status, wait,
             since, log_quote(q, sizeof q, c->reason));
    c->next_try_ms = now_ms() + wait;
    batch_end(c, false);
}

/* The attempt failed with status and reason: counted in the journal, then
 * retried later or given up. */
static void attempt_failed(Conn *c, int status, const char *reason, const char *response,
                           bool abort_now)
{
    Engine *e = c->e;
    if (c->kind == KIND_ARCHIVE) {
        metrics_inc(e->m_arch_failures, 1);
    } else {
        metrics_inc(e->m_failures, 1);
        count_response(e, c->dest_id, status);
    }
    if (!abort_now && c->kind != KIND_ARCHIVE)
        metrics_inc(dest_series(e, "pintle_retries_total", METRICS_RETRIES_HELP, METRIC_COUNTER,
                                c->dest_id, NULL),
                    c->nevents);
    c->status = status;
    snprintf(c->reason, sizeof c->reason, "%s", reason);
    free(c->response);
    c->response = response ? xstrdup(response) : NULL;
    if (abort_now) {
        give_up(c);
        return;
    }
    Buf sql;
    buf_init(&sql);
    buf_printf(&sql, "SELECT %s('%s', ", c->kind == KIND_ARCHIVE ? "archive_failed" : "batch_failed",
               c->batch_id);
    lit(&sql, reason);
    buf_puts(&sql, ")");
    enqueue(e, c, &sql, on_failed);
}

static void on_done(Conn *c, PGresult *res, const Err *err)
{
    Engine *e = c->e;
    char q[1100];
    if (err != NULL) {
        /* fenced (another instance completes it), done by someone else, or
         * the database failed: the journal row decides what happens next */
        if (strstr(err->msg, "PB404") == NULL)
            log_warn("batch_commit_failed", "batch_id=%s destination_id=%s fenced=%d error=%s",
                     c->batch_id, c->dest_id, lease_is_fenced(err),
                     log_quote(q, sizeof q, err->msg));
        c->next_try_ms = now_ms() + e->bc->retry_initial_ms;
        batch_end(c, false);
        return;
    }
    int64_t t = now_ms();
    c->last_upload_ms = t;
    if (c->kind == KIND_ARCHIVE) {
        metrics_inc(e->m_arch_events, c->nevents);
        metrics_inc(e->m_arch_objects, 1);
        log_info("archive_written", "batch_id=%s source_id=%s events=%d attempts=%d ms=%" PRId64,
                 c->batch_id, c->source_id, c->nevents, c->attempts + 1, t - c->started_ms);
        batch_end(c, c->batch_more); /* a full batch: drain without waiting */
        return;
    }
    metrics_inc(e->m_events, c->nevents);
    metrics_inc(e->m_batches, 1);
    metrics_observe(e->m_seconds, (double)(t - c->started_ms) / 1000.0);
    metrics_observe(dest_series(e, "pintle_delivery_duration_seconds", "Delivery request latency",
                                METRIC_HISTOGRAM, c->dest_id, NULL),
                    (double)(t - c->started_ms) / 1000.0);
    metrics_inc(dest_series(e, "pintle_stage_out_total", METRICS_STAGE_OUT_HELP, METRIC_COUNTER,
                            c->dest_id, NULL),
                c->nevents);
    count_response(e, c->dest_id, 200);
    log_info("batch_delivered", "batch_id=%s source_id=%s destination_id=%s type=%s events=%d"
             " attempts=%d ms=%" PRId64,
             c->batch_id, c->source_id, c->dest_id, c->def_name, c->nevents, c->attempts + 1,
             t - c->started_ms);
    batch_end(c, c->nevents >= e->bc->max_events);
}

static void delivered(Conn *c)
{
    Engine *e = c->e;
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "BEGIN;");
    fence_home(e, c, &sql);
    buf_printf(&sql, "SELECT %s('%s'); COMMIT;",
               c->kind == KIND_ARCHIVE ? "archive_done" : "batch_done", c->batch_id);
    enqueue(e, c, &sql, on_done);
}

static void on_put(void *arg, const HttpcResponse *r)
{
    Conn *c = arg;
    if (r->status >= 200 && r->status < 300) {
        delivered(c);
        return;
    }
    char code[128], reason[1024];
    objstore_error_code(r->body, code, sizeof code);
    if (r->status == 0)
        snprintf(reason, sizeof reason, "could not upload: %s", r->error ? r->error : "no answer");
    else
        snprintf(reason, sizeof reason, "upload refused with HTTP %ld%s%s", r->status,
                 code[0] ? " " : "", code);
    attempt_failed(c, (int)r->status, reason, r->status ? r->body : NULL, false);
}

static void on_wh(void *arg, WhStatus st, const WhResult *res, const Err *err)
{
    Conn *c = arg;
    if (st == WH_OK) {
        log_debug("warehouse_loaded", "batch_id=%s rows=%" PRId64 " tables=%d columns_added=%d"
                  " already_loaded=%d",
                  c->batch_id, res->rows, res->tables, res->columns_added, res->already_loaded);
        delivered(c);
        return;
    }
    char reason[1100];
    snprintf(reason, sizeof reason, "could not load into the warehouse: %s",
             err ? err->msg : "unknown error");
    attempt_failed(c, st == WH_ABORT ? 400 : 500, reason, NULL, st == WH_ABORT);
}

/* One line of a raw archive object, RudderStack's jobs backup fields:
 * {"userId", "payload" (the stored event), "createdAt", "messageId"}.
 * Columns of archive_events: job_id, payload, user_id, created_at. */
static void archive_line(Buf *b, PGresult *res, int i)
{
    const char *payload = PQgetvalue(res, i, 1);
    buf_puts(b, "{\"userId\":");
    jsonu_put_string(b, PQgetvalue(res, i, 2));
    buf_puts(b, ",\"payload\":");
    buf_append(b, payload, (size_t)PQgetlength(res, i, 1));
    buf_puts(b, ",\"createdAt\":");
    jsonu_put_string(b, PQgetvalue(res, i, 3));
    buf_puts(b, ",\"messageId\":");
    JSpan v;
    Buf id;
    buf_init(&id);
    /* the stored JSON string as it is (escapes kept), once it decodes */
    if (jscan_get(jscan_doc(payload, (size_t)PQgetlength(res, i, 1)), "messageId", &v) &&
        jscan_type(v) == 's' && jscan_string(v, &id))
        buf_append(b, v.p, v.n);
    else
        buf_puts(b, "\"\"");
    buf_deinit(&id);
    buf_putc(b, '}');
}

static void on_events(Conn *c, PGresult *res, const Err *err)
{
    Engine *e = c->e;
    char q[1100];
    if (err != NULL || res == NULL) {
        log_warn("batch_read_failed", "batch_id=%s destination_id=%s error=%s", c->batch_id,
                 c->dest_id, log_quote(q, sizeof q, err ? err->msg : "no result"));
        c->next_try_ms = now_ms() + e->bc->retry_initial_ms;
        batch_end(c, false);
        return;
    }
    int n = PQntuples(res);
    if (n != c->nevents) {
        /* the journal and the queue disagree: a bug or a dataset dropped
         * under the batch; keep the journal row for an operator */
        log_error("batch_events_missing", "batch_id=%s destination_id=%s journaled=%d found=%d",
                  c->batch_id, c->dest_id, c->nevents, n);
        c->next_try_ms = now_ms() + e->bc->retry_max_ms;
        batch_end(c, false);
        return;
    }
    if (c->kind == KIND_OBJECT || c->kind == KIND_ARCHIVE) {
        Buf lines, gz, key;
        buf_init(&lines);
        buf_init(&gz);
        buf_init(&key);
        for (int i = 0; i < n; i++) {
            if (c->kind == KIND_ARCHIVE)
                archive_line(&lines, res, i);
            else
                buf_append(&lines, PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
            buf_putc(&lines, '\n');
        }
        objstore_gzip(&gz, lines.data, lines.len);
        if (c->kind == KIND_ARCHIVE) {
            metrics_inc(e->m_arch_bytes, (double)gz.len);
            objstore_format_archive_key(&key, c->batch_prefix, c->source_id,
                                        c->first_created_ms, c->last_created_ms, c->instance_id,
                                        c->batch_ws, c->batch_id);
        } else {
            metrics_inc(e->m_bytes, (double)gz.len);
            objstore_format_key(&key, c->target.prefix, c->source_id, c->first_created_ms,
                                c->batch_id);
        }
        log_debug("batch_upload", "batch_id=%s key=%s events=%d bytes=%zu gzip_bytes=%zu",
                  c->batch_id, key.data, n, lines.len, gz.len);
        int rc = objstore_put(e->http, &c->target, key.data, gz.data, gz.len, e->bc->timeout_ms,
                              on_put, c);
        buf_deinit(&lines);
        buf_deinit(&gz);
        buf_deinit(&key);
        if (rc < 0)
            attempt_failed(c, 0, "could not start the upload", NULL, false);
        return;
    }
    /* warehouse */
    const char **evs = xcalloc((size_t)n + 1, sizeof *evs);
    size_t *lens = xcalloc((size_t)n + 1, sizeof *lens);
    for (int i = 0; i < n; i++) {
        evs[i] = PQgetvalue(res, i, 1);
        lens[i] = (size_t)PQgetlength(res, i, 1);
    }
    WhLoad load = {c->batch_id, c->workspace_id, c->source_id, c->dest_id, n, evs, lens};
    int rc = whworker_start(c->wh, &load, on_wh, c); /* copies the load */
    free(evs);
    free(lens);
    if (rc < 0)
        attempt_failed(c, 0, "the warehouse worker is busy", NULL, false);
}

static void on_plan(Conn *c, PGresult *res, const Err *err)
{
    Engine *e = c->e;
    char q[1100];
    if (err != NULL) {
        if (!lease_is_fenced(err))
            log_warn("batch_plan_failed", "source_id=%s destination_id=%s error=%s", c->source_id,
                     c->dest_id, log_quote(q, sizeof q, err->msg));
        c->next_try_ms = now_ms() + e->bc->poll_interval_ms;
        batch_end(c, false);
        return;
    }
    if (res == NULL || PQntuples(res) == 0) {
        c->drained = c->kind == KIND_ORPHAN;
        if (c->kind == KIND_ARCHIVE && c->plan_forced) {
            c->batch_more = false;
            c->last_upload_ms = now_ms(); /* nothing pending: the next scan in an interval */
        }
        c->next_try_ms = now_ms() + e->bc->poll_interval_ms;
        batch_end(c, false);
        return;
    }
    snprintf(c->batch_id, sizeof c->batch_id, "%s", PQgetvalue(res, 0, 0));
    c->nevents = atoi(PQgetvalue(res, 0, 1));
    c->first_created_ms = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    c->attempts = atoi(PQgetvalue(res, 0, 3));
    c->home = atoi(PQgetvalue(res, 0, 6));
    c->home_epoch = lease_epoch(e->lease, c->home);
    if (c->kind == KIND_ARCHIVE) {
        c->last_created_ms = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
        snprintf(c->instance_id, sizeof c->instance_id, "%s", PQgetvalue(res, 0, 8));
        free(c->batch_ws);
        free(c->batch_prefix);
        c->batch_ws = xstrdup(PQgetvalue(res, 0, 9));
        c->batch_prefix = xstrdup(PQgetvalue(res, 0, 10));
        c->batch_more = PQgetvalue(res, 0, 11)[0] == 't';
    }
    bool resumed = PQgetvalue(res, 0, 5)[0] == 't';
    c->started_ms = now_ms();
    log_debug("batch_planned", "batch_id=%s source_id=%s destination_id=%s events=%d resumed=%d",
              c->batch_id, c->source_id, c->dest_id, c->nevents, resumed);
    if (resumed && c->attempts > 0)
        log_info("batch_resumed", "batch_id=%s destination_id=%s events=%d attempts=%d",
                 c->batch_id, c->dest_id, c->nevents, c->attempts);
    if (c->kind == KIND_ARCHIVE && c->target_err[0] != '\0') {
        attempt_failed(c, 400, c->target_err, NULL, false);
        return;
    }
    if (c->kind == KIND_ORPHAN || c->kind == KIND_UNSUPPORTED || c->target_err[0] != '\0') {
        char reason[600];
        if (c->kind == KIND_ORPHAN)
            snprintf(reason, sizeof reason,
                     "destination \"%s\" of source \"%s\" is not in the workspace config",
                     c->dest_id, c->source_id);
        else if (c->kind == KIND_UNSUPPORTED)
            snprintf(reason, sizeof reason, "destination type \"%s\" is not supported",
                     c->def_name);
        else
            snprintf(reason, sizeof reason, "destination config unusable: %s", c->target_err);
        attempt_failed(c, c->kind == KIND_ORPHAN ? 404 : 400, reason, NULL, true);
        return;
    }
    Buf sql;
    buf_init(&sql);
    if (c->kind == KIND_ARCHIVE)
        buf_printf(&sql, "SELECT job_id, payload, user_id, created_at FROM archive_events('%s')",
                   c->batch_id);
    else
        buf_printf(&sql, "SELECT job_id, payload FROM batch_events('%s')", c->batch_id);
    enqueue(e, c, &sql, on_events);
}

/* Unforced, archive_plan only resumes a journaled batch; it scans the queue
 * once the upload interval passed (journaling whatever is pending, up to
 * the limits), then again at once after each full batch written, and the
 * interval starts again when a scan found nothing or a batch was not full. */
static void plan_archive(Engine *e, Conn *c, const int *parts, int n, int64_t t)
{
    bool force = c->batch_more ||
                 t - c->last_upload_ms >= (int64_t)e->ac->upload_interval_s * 1000;
    c->plan_forced = force;
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "BEGIN;");
    lease_format_fence(e->lease, &sql, parts, n);
    buf_puts(&sql, "SELECT * FROM archive_plan(");
    lit(&sql, c->source_id);
    buf_puts(&sql, ", ");
    lit(&sql, c->workspace_id);
    buf_puts(&sql, ", ");
    jobq_format_int_array(&sql, parts, n);
    buf_printf(&sql, "::int[], %d, %d, %s, ", e->ac->max_events, e->ac->max_bytes,
               force ? "true" : "false");
    lit(&sql, e->ac->instance_id);
    buf_puts(&sql, ", ");
    if (c->target_ok) /* else NULL: the prefix of the config that works */
        lit(&sql, c->target.prefix ? c->target.prefix : "");
    else
        buf_puts(&sql, "NULL");
    buf_puts(&sql, "); COMMIT;");
    enqueue(e, c, &sql, on_plan);
}

static void plan(Engine *e, Conn *c, const int *parts, int n, int64_t t)
{
    c->busy = true;
    if (c->kind == KIND_ARCHIVE) {
        plan_archive(e, c, parts, n, t);
        return;
    }
    bool force = t - c->last_upload_ms >= (int64_t)e->bc->upload_interval_s * 1000 ||
                 c->kind == KIND_ORPHAN || c->kind == KIND_UNSUPPORTED;
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "BEGIN;");
    lease_format_fence(e->lease, &sql, parts, n);
    buf_puts(&sql, "SELECT * FROM batch_plan(");
    lit(&sql, c->source_id);
    buf_puts(&sql, ", ");
    lit(&sql, c->dest_id);
    buf_puts(&sql, ", ");
    jobq_format_int_array(&sql, parts, n);
    buf_printf(&sql, "::int[], %d, %d, %s); COMMIT;", e->bc->max_events, e->bc->max_bytes,
               force ? "true" : "false");
    enqueue(e, c, &sql, on_plan);
}

/* ---- the low-water marks and orphans ---- */

static void on_low_water_res(Conn *dummy, PGresult *res, const Err *err)
{
    Engine *e = dummy->e;
    e->low_water_running = false;
    free(dummy);
    if (err != NULL || res == NULL || e->stopping)
        return;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *sid = PQgetvalue(res, i, 1), *did = PQgetvalue(res, i, 2);
        if (conn_find(e, sid, did) != NULL)
            continue;
        Conn *c = conn_add(e, sid, did, "", "", KIND_ORPHAN);
        log_info("connection_orphaned", "source_id=%s destination_id=%s action=dead_letter", sid,
                 did);
        (void)c;
    }
}

/* A failure is logged once, and its end once. */
static void on_archive_low_water(Conn *dummy, PGresult *res, const Err *err)
{
    Engine *e = dummy->e;
    char q[1100];
    if (err != NULL && !e->stopping && !e->archive_low_water_failing)
        log_warn("archive_low_water_failed", "error=%s action=retry_every_tick",
                 log_quote(q, sizeof q, err->msg));
    else if (err == NULL && e->archive_low_water_failing)
        log_info("archive_low_water_recovered", "state=ok");
    e->archive_low_water_failing = err != NULL;
    free(dummy);
}

/* The sources this instance archives, as its workspace config says (a
 * source is archived while any live instance says so), committed on its
 * own; then the archive's low-water marks of our partitions. */
static void archive_low_water(Engine *e, const int *parts, int n)
{
    Buf sql, srcs, wss;
    buf_init(&sql);
    buf_init(&srcs);
    buf_init(&wss);
    int k = 0;
    for (Conn *c = e->conns; c; c = c->next) {
        if (c->kind != KIND_ARCHIVE || !c->present)
            continue;
        buf_puts(&srcs, k ? ", " : "");
        lit(&srcs, c->source_id);
        buf_puts(&wss, k ? ", " : "");
        lit(&wss, c->workspace_id);
        k++;
    }
    buf_puts(&sql, "BEGIN; SELECT archive_set_sources(");
    lit(&sql, lease_owner(e->lease));
    buf_printf(&sql, ", ARRAY[%s]::text[], ARRAY[%s]::text[]); COMMIT; SELECT archive_low_water(",
               srcs.data ? srcs.data : "", wss.data ? wss.data : "");
    jobq_format_int_array(&sql, parts, n);
    buf_puts(&sql, "::int[])");
    buf_deinit(&srcs);
    buf_deinit(&wss);
    Conn *dummy = xcalloc(1, sizeof *dummy);
    dummy->e = e;
    enqueue(e, dummy, &sql, on_archive_low_water);
}

static void low_water(Engine *e, const int *parts, int n)
{
    Conn *dummy = xcalloc(1, sizeof *dummy);
    dummy->e = e;
    e->low_water_running = true;
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "SELECT * FROM batch_low_water(");
    jobq_format_int_array(&sql, parts, n);
    buf_puts(&sql, "::int[])");
    enqueue(e, dummy, &sql, on_low_water_res);
    archive_low_water(e, parts, n);
}

/* ---- the cycle ---- */

static void cycle(Engine *e)
{
    if (e->stopping)
        return;
    int64_t t = now_ms();
    int n = lease_usable_list(e->lease, e->parts);
    if (n == 0)
        return;
    /* a connection that left the config with nothing pending is forgotten */
    for (Conn **pp = &e->conns; *pp;) {
        Conn *c = *pp;
        if ((c->kind == KIND_ORPHAN && !c->present && !c->busy && c->drained) ||
            (c->kind == KIND_ARCHIVE && !c->present && !c->busy)) {
            if (c->kind == KIND_ARCHIVE)
                log_info("archive_removed", "source_id=%s", c->source_id);
            *pp = c->next;
            conn_free(c);
            continue;
        }
        pp = &c->next;
    }
    for (Conn *c = e->conns; c; c = c->next)
        if (!c->busy && t >= c->next_try_ms)
            plan(e, c, e->parts, n, t);
    if (!e->low_water_running && t - e->last_low_water_ms >= LOW_WATER_MS) {
        e->last_low_water_ms = t;
        low_water(e, e->parts, n);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    cycle(arg);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    cycle(arg);
}

static void on_ws_change(void *arg)
{
    Engine *e = arg;
    sync_conns(e);
    event_active(e->kick_ev, 0, 0);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    if (e->stop_done) {
        void (*done)(void *) = e->stop_done;
        e->stop_done = NULL;
        done(e->stop_arg);
    }
}

Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                      Httpc *http, Metrics *metrics, Err *err)
{
    Engine *e = xcalloc(1, sizeof *e);
    e->base = base;
    e->cfg = cfg;
    e->bc = &cfg->batchrouter;
    e->ac = &cfg->archive;
    e->pool = pool;
    e->lease = lease;
    e->http = http;
    e->parts = xcalloc((size_t)cfg->queue.partitions, sizeof(int));
    e->ws = ws_watcher_create(base, &cfg->workspace, on_ws_change, e, err);
    if (e->ws == NULL) {
        free(e->parts);
        free(e);
        return NULL;
    }
    e->m = metrics;
    e->m_events = metrics_series(metrics, "pintle_batchrouter_events_delivered_total",
                                 "events delivered in batches (objects or warehouse loads)",
                                 METRIC_COUNTER, "");
    e->m_batches = metrics_series(metrics, "pintle_batchrouter_batches_total",
                                  "batches delivered", METRIC_COUNTER, "");
    e->m_failures = metrics_series(metrics, "pintle_batchrouter_attempts_failed_total",
                                   "failed upload or load attempts", METRIC_COUNTER, "");
    e->m_dead = metrics_series(metrics, "pintle_batchrouter_dead_letters_total",
                               "events given up into dead letters", METRIC_COUNTER, "");
    e->m_bytes = metrics_series(metrics, "pintle_batchrouter_object_bytes_total",
                                "gzip bytes uploaded (attempts included)", METRIC_COUNTER, "");
    e->m_seconds = metrics_series(metrics, "pintle_batchrouter_batch_seconds",
                                  "from plan to done of a delivered batch", METRIC_HISTOGRAM, "");
    e->m_arch_events = metrics_series(metrics, "pintle_archive_events_total",
                                      "gw events written to the raw archive", METRIC_COUNTER, "");
    e->m_arch_objects = metrics_series(metrics, "pintle_archive_objects_total",
                                       "raw archive objects written", METRIC_COUNTER, "");
    e->m_arch_failures = metrics_series(metrics, "pintle_archive_failures_total",
                                        "failed raw archive uploads (retried)", METRIC_COUNTER,
                                        "");
    e->m_arch_bytes = metrics_series(metrics, "pintle_archive_bytes_total",
                                     "gzip bytes of raw archive uploads (attempts included)",
                                     METRIC_COUNTER, "");
    db_pool_set_idle_cb(pool, run_ops, e);
    e->tick = event_new(base, -1, EV_PERSIST, on_tick, e);
    e->kick_ev = event_new(base, -1, 0, on_kick, e);
    e->stop_ev = event_new(base, -1, 0, on_stop, e);
    int ms = e->bc->poll_interval_ms < 200 ? e->bc->poll_interval_ms : 200;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(e->tick, &tv);
    sync_conns(e);
    return e;
}

void engine_destroy(Engine *e)
{
    if (e == NULL)
        return;
    while (e->ops_head) {
        DbOp *op = e->ops_head;
        e->ops_head = op->next;
        if (op->cb == on_low_water_res || op->cb == on_archive_low_water)
            free(op->c);
        free(op->sql);
        free(op);
    }
    while (e->conns) {
        Conn *c = e->conns;
        e->conns = c->next;
        conn_free(c);
    }
    ws_watcher_destroy(e->ws);
    event_free(e->tick);
    event_free(e->kick_ev);
    event_free(e->stop_ev);
    free(e->parts);
    free(e);
}

void engine_kick(Engine *e)
{
    event_active(e->kick_ev, 0, 0);
}

void engine_leases_changed(Engine *e)
{
    /* a partition being given back is freed once no batch of ours has it
     * as home (a batch's other partitions wait for it wherever they are) */
    int P = lease_partitions(e->lease);
    for (int p = 0; p < P; p++) {
        if (!lease_giving(e->lease, p))
            continue;
        bool held = false;
        for (Conn *c = e->conns; c; c = c->next)
            held |= c->busy; /* a plan in flight may still journal p as a home */
        if (!held)
            lease_quiesced(e->lease, p);
    }
    event_active(e->kick_ev, 0, 0);
}

static void on_stop_deadline(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    httpc_cancel_all(e->http);
}

void engine_stop(Engine *e, int deadline_ms, void (*done)(void *), void *arg)
{
    e->stopping = true;
    e->stop_done = done;
    e->stop_arg = arg;
    bool any = false;
    for (Conn *c = e->conns; c; c = c->next)
        any |= c->busy;
    if (!any) {
        event_active(e->stop_ev, 0, 0);
        return;
    }
    int ms = deadline_ms > 1000 ? deadline_ms - 1000 : deadline_ms / 2;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_once(e->base, -1, EV_TIMEOUT, on_stop_deadline, e, &tv);
}

bool engine_ready(Engine *e, char *detail, size_t size)
{
    int conns = 0, busy = 0;
    for (Conn *c = e->conns; c; c = c->next) {
        conns++;
        busy += c->busy;
    }
    bool db = db_pool_connected(e->pool) > 0;
    snprintf(detail, size, "db=%s connections=%d busy=%d", db ? "up" : "down", conns, busy);
    return db && !e->stopping;
}
