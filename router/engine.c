/* Router engine (see engine.h).
 *
 * Ordering: jobs are queued per (destination, user); only the head of a
 * user's queue is ever in flight, so a user's events reach a destination in
 * the order the gateway committed them. Destinations are independent: each
 * has its own bound on requests in flight (router.max_concurrency_per_
 * destination) and its own list of users ready to send.
 *
 * Durability (DESIGN §3): the router's cursor per partition only passes a
 * job once its fate is durable: delivered (no row needed), or recorded in
 * rt_retries (failed: attempts and next retry time; or parked behind a
 * failed job of the same user), or aborted into dead_letters. Outcomes are
 * batched: every flush is one transaction that upserts retry rows, deletes
 * finished ones, inserts dead letters and advances the cursors (compare-and-
 * set). A crash loses at most undelivered-or-unflushed state, which is
 * claimed again: delivery is at least once.
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * router') on its only connection; any database error drops all in-memory
 * state (after deliveries in flight return) and the engine starts over from
 * the database: lock, cursors, retry table. */
#include "router/engine.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/hmap.h"
#include "common/jobq.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "router/delivery.h"

typedef enum Fate { FATE_PENDING, FATE_DONE, FATE_DEAD } Fate;

typedef struct UserQ UserQ;

typedef struct RJob {
    int64_t job_id;
    int partition;
    char *workspace_id, *source_id, *dest_id, *user_id, *payload;
    UserQ *uq;
    struct RJob *next_user; /* user queue */
    struct RJob *next_part; /* partition list (claim order) */
    bool in_part;           /* still in its partition list */
    bool in_user;           /* still in its user queue */
    bool durable;           /* fate recorded (or delivered): the cursor may pass */
    bool dirty;             /* state to write at the next flush */
    bool row;               /* wants a row in rt_retries (failed or parked) */
    bool parked;
    bool inflight;
    Fate fate;
    int attempts;
    int64_t first_failed_ms, next_retry_ms;
    int last_status;
    char *last_error;
    char *response;
    int flush_gen; /* flush that last included this job */
} RJob;

typedef struct Dest Dest;

struct UserQ {
    char *key;
    Dest *dest;
    RJob *head, *tail;
    bool queued;  /* in the destination's ready list */
    UserQ *next_ready;
    bool delayed; /* in the engine's list of users waiting for a retry time */
    UserQ *next_delayed;
};

struct Dest {
    char *id;
    int inflight;
    UserQ *ready_head, *ready_tail;
    MetricSeries *m_ok, *m_retry, *m_abort, *m_latency;
};

typedef struct Part {
    RJob *head, *tail;
    int64_t read_cursor;    /* last id claimed */
    int64_t durable_cursor; /* as stored in the database */
} Part;

typedef enum State { ST_DOWN, ST_LOCKING, ST_LOADING, ST_UP, ST_RESET } State;

struct Engine {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool;
    Httpc *http;
    Metrics *m;
    State state;
    unsigned long lock_gen;
    bool db_busy; /* an operation is running on the connection */
    bool stopping;
    void (*stopped)(void *);
    void *stopped_arg;
    int nparts;
    Part *parts;
    HMap dests;  /* id -> Dest */
    HMap users;  /* dest \x1f user -> UserQ */
    UserQ *delayed; /* users whose head waits for its retry time */
    RJob **dirty;
    int ndirty, capdirty;
    int pending; /* jobs in memory */
    int inflight;
    int flush_gen;
    bool want_claim;
    bool claim_full; /* last claim filled its limits */
    struct timeval maintained_at, flushed_at;
    struct event *tick, *kick_ev;
    int backoff_ms;
    struct timeval next_db_try;
    Buf sql, retry_rows, dead_rows, del_ids;
    DbCopy copies[2];
    RJob **flushing;
    int nflushing;
    int64_t *flush_old, *flush_new;
    int *flush_parts;
    int flush_n;
    MetricSeries *m_pending, *m_inflight, *m_active, *m_retry_rows;
};

static void pump(Engine *e);

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void labels(char *out, size_t n, const char *dest_id)
{
    char q[300];
    log_quote(q, sizeof q, dest_id);
    snprintf(out, n, "destination_id=%s", q);
}

static Dest *dest_get(Engine *e, const char *id)
{
    Dest *d = hmap_get(&e->dests, id);
    if (d != NULL)
        return d;
    d = xcalloc(1, sizeof(*d));
    d->id = xstrdup(id);
    char l[320];
    labels(l, sizeof l, id);
    d->m_ok = metrics_series(e->m, "pintle_router_delivered_total", "Jobs delivered (2xx)", METRIC_COUNTER, l);
    d->m_retry = metrics_series(e->m, "pintle_router_retries_total", "Deliveries that failed and will be retried", METRIC_COUNTER, l);
    d->m_abort = metrics_series(e->m, "pintle_router_aborted_total", "Jobs aborted into dead letters", METRIC_COUNTER, l);
    d->m_latency = metrics_series(e->m, "pintle_router_delivery_duration_seconds", "Delivery request latency", METRIC_HISTOGRAM, l);
    hmap_put(&e->dests, id, d);
    return d;
}

static UserQ *user_get(Engine *e, Dest *d, const char *user)
{
    char *key = xasprintf("%s\x1f%s", d->id, user);
    UserQ *u = hmap_get(&e->users, key);
    if (u == NULL) {
        u = xcalloc(1, sizeof(*u));
        u->key = key;
        u->dest = d;
        hmap_put(&e->users, key, u);
    } else {
        free(key);
    }
    return u;
}

static void job_free(RJob *j)
{
    free(j->workspace_id);
    free(j->source_id);
    free(j->dest_id);
    free(j->user_id);
    free(j->payload);
    free(j->last_error);
    free(j->response);
    free(j);
}

/* A job leaves memory once it left its user queue and its partition list
 * and no flush still refers to it. */
static void job_maybe_free(Engine *e, RJob *j)
{
    if (!j->in_user && !j->in_part && !j->dirty && j->flush_gen == 0) {
        e->pending--;
        job_free(j);
    }
}

static void mark_dirty(Engine *e, RJob *j)
{
    if (j->dirty)
        return;
    j->dirty = true;
    if (e->ndirty == e->capdirty) {
        e->capdirty = e->capdirty ? e->capdirty * 2 : 256;
        e->dirty = xrealloc(e->dirty, sizeof(RJob *) * (size_t)e->capdirty);
    }
    e->dirty[e->ndirty++] = j;
}

static void make_ready(UserQ *u)
{
    if (u->queued || u->head == NULL)
        return;
    u->queued = true;
    u->next_ready = NULL;
    Dest *d = u->dest;
    if (d->ready_tail)
        d->ready_tail->next_ready = u;
    else
        d->ready_head = u;
    d->ready_tail = u;
}

/* The user's head waits for its retry time; the tick makes it ready again. */
static void delay_user(Engine *e, UserQ *u)
{
    if (u->delayed)
        return;
    u->delayed = true;
    u->next_delayed = e->delayed;
    e->delayed = u;
}

static bool user_has_failed_head(const UserQ *u)
{
    return u->head != NULL && u->head->row && !u->head->parked;
}

static void user_push(Engine *e, UserQ *u, RJob *j)
{
    j->uq = u;
    j->in_user = true;
    j->next_user = NULL;
    /* behind a failed job: park durably so the cursor can move on */
    if (user_has_failed_head(u) && !j->row) {
        j->row = true;
        j->parked = true;
        mark_dirty(e, j);
    }
    if (u->tail)
        u->tail->next_user = j;
    else
        u->head = j;
    u->tail = j;
    make_ready(u);
}

static void user_pop(Engine *e, UserQ *u)
{
    RJob *j = u->head;
    u->head = j->next_user;
    if (u->head == NULL)
        u->tail = NULL;
    j->in_user = false;
    j->next_user = NULL;
    if (u->head == NULL && !u->queued && !u->delayed) {
        hmap_del(&e->users, u->key);
        free(u->key);
        free(u);
        j->uq = NULL;
        return;
    }
    make_ready(u);
}

/* ---- delivery ---- */

typedef struct Attempt {
    Engine *e;
    RJob *j;
    Delivery d;
} Attempt;

static void finish_dead(Engine *e, RJob *j, int status, const char *why, const char *resp)
{
    j->fate = FATE_DEAD;
    j->last_status = status;
    free(j->last_error);
    j->last_error = xstrdup(why);
    free(j->response);
    j->response = resp ? xstrndup(resp, strlen(resp) > 4096 ? 4096 : strlen(resp)) : NULL;
    mark_dirty(e, j);
    metrics_inc(dest_get(e, j->dest_id)->m_abort, 1);
    char q[600];
    log_warn("job_aborted", "job_id=%" PRId64 " destination_id=%s status=%d attempts=%d reason=%s",
             j->job_id, j->dest_id, status, j->attempts, log_quote(q, sizeof q, why));
    UserQ *u = j->uq;
    user_pop(e, u);
    job_maybe_free(e, j);
}

static void on_delivered(void *arg, const HttpcResponse *r)
{
    Attempt *a = arg;
    Engine *e = a->e;
    RJob *j = a->j;
    delivery_deinit(&a->d);
    free(a);
    j->inflight = false;
    e->inflight--;
    Dest *d = dest_get(e, j->dest_id);
    d->inflight--;
    metrics_observe(d->m_latency, r->seconds);
    if (e->state == ST_RESET) {
        /* state is being dropped: the outcome is forgotten, the job is read again */
        pump(e);
        return;
    }
    DeliveryOutcome oc = delivery_classify(r->status);
    UserQ *u = j->uq;
    if (oc == DELIVERY_OK) {
        metrics_inc(d->m_ok, 1);
        log_debug("job_delivered", "job_id=%" PRId64 " destination_id=%s status=%ld", j->job_id,
                  j->dest_id, r->status);
        j->fate = FATE_DONE;
        if (j->row)
            mark_dirty(e, j); /* delete its retry row */
        else
            j->durable = true;
        user_pop(e, u);
        job_maybe_free(e, j);
        pump(e);
        return;
    }
    char why[512];
    if (r->status == 0)
        snprintf(why, sizeof why, "%s", r->error ? r->error : "network error");
    else
        snprintf(why, sizeof why, "destination answered %ld", r->status);
    int64_t now = now_ms();
    if (oc == DELIVERY_ABORT) {
        j->attempts++;
        finish_dead(e, j, (int)r->status, why, r->body);
        pump(e);
        return;
    }
    j->attempts++;
    if (j->first_failed_ms == 0)
        j->first_failed_ms = now;
    const RouterConfig *rc = &e->cfg->router;
    if (j->attempts >= rc->max_attempts &&
        now - j->first_failed_ms >= (int64_t)rc->max_retry_minutes * 60000) {
        char w2[600];
        snprintf(w2, sizeof w2, "retries exhausted after %d attempts: %s", j->attempts, why);
        finish_dead(e, j, (int)r->status, w2, r->body);
        pump(e);
        return;
    }
    int64_t delay = (int64_t)rc->retry_initial_s * 1000;
    for (int i = 1; i < j->attempts && delay < (int64_t)rc->retry_max_s * 1000; i++)
        delay *= 2;
    if (delay > (int64_t)rc->retry_max_s * 1000)
        delay = (int64_t)rc->retry_max_s * 1000;
    j->next_retry_ms = now + delay;
    j->last_status = (int)r->status;
    free(j->last_error);
    j->last_error = xstrdup(why);
    bool was_row = j->row;
    j->row = true;
    j->parked = false;
    mark_dirty(e, j);
    metrics_inc(d->m_retry, 1);
    char q[600];
    log_info("job_retry", "job_id=%" PRId64 " destination_id=%s attempt=%d status=%ld retry_in_ms=%" PRId64 " reason=%s",
             j->job_id, j->dest_id, j->attempts, r->status, delay, log_quote(q, sizeof q, why));
    if (!was_row) {
        /* everything queued behind it for this user now parks durably */
        for (RJob *k = j->next_user; k; k = k->next_user)
            if (!k->row) {
                k->row = true;
                k->parked = true;
                mark_dirty(e, k);
            }
    }
    /* the user stays out of the ready list until the retry time (tick) */
    delay_user(e, u);
    pump(e);
}

static void deliver(Engine *e, RJob *j)
{
    Attempt *a = xcalloc(1, sizeof(*a));
    a->e = e;
    a->j = j;
    Err err;
    if (delivery_build(&a->d, j->payload, &err) < 0) {
        delivery_deinit(&a->d);
        free(a);
        finish_dead(e, j, 400, err.msg, NULL);
        return;
    }
    HttpcRequest req = {a->d.method, a->d.url.data, (const char *const *)a->d.headers,
                        a->d.has_body ? a->d.body.data : NULL, a->d.body.len,
                        e->cfg->router.timeout_ms, .max_response_bytes = 4096,
                        .keep_prefix = true};
    Dest *d = dest_get(e, j->dest_id);
    if (httpc_start(e->http, &req, on_delivered, a) < 0) {
        delivery_deinit(&a->d);
        free(a);
        finish_dead(e, j, 0, "could not start the HTTP request", NULL);
        return;
    }
    j->inflight = true;
    d->inflight++;
    e->inflight++;
}

/* Starts deliveries on every destination that has room. */
static void dispatch(Engine *e)
{
    if (e->state != ST_UP || e->stopping)
        return;
    int64_t now = now_ms();
    size_t it = 0;
    HMapEntry *ent;
    while (hmap_next(&e->dests, &it, &ent)) {
        Dest *d = ent->value;
        int rounds = 0;
        while (d->inflight < e->cfg->router.max_concurrency_per_destination && d->ready_head &&
               rounds++ < 100000) {
            UserQ *u = d->ready_head;
            d->ready_head = u->next_ready;
            if (d->ready_head == NULL)
                d->ready_tail = NULL;
            u->queued = false;
            RJob *j = u->head;
            if (j == NULL) {
                if (!u->delayed) { /* else the tick frees it */
                    hmap_del(&e->users, u->key);
                    free(u->key);
                    free(u);
                }
                continue;
            }
            if (j->inflight)
                continue;
            if (j->next_retry_ms > now) {
                delay_user(e, u); /* the tick puts it back when due */
                continue;
            }
            deliver(e, j);
        }
    }
}

/* ---- database ---- */

static void db_failed(Engine *e, const char *step, const Err *err);
static void claim(Engine *e, DbConn *c);
static void flush(Engine *e, DbConn *c);

static void reset_state(Engine *e)
{
    /* every job is dropped: the next leader term reloads from the database */
    HMap seen;
    hmap_init(&seen);
    size_t it = 0;
    HMapEntry *ent;
    while (hmap_next(&e->users, &it, &ent)) {
        UserQ *u = ent->value;
        for (RJob *j = u->head, *n; j; j = n) {
            n = j->next_user;
            char k[32];
            snprintf(k, sizeof k, "%" PRId64, j->job_id);
            if (hmap_get(&seen, k) == NULL) {
                hmap_put(&seen, k, j);
            }
        }
        free(u->key);
        free(u);
    }
    hmap_deinit(&e->users);
    hmap_init(&e->users);
    e->delayed = NULL;
    for (int p = 0; p < e->nparts; p++) {
        for (RJob *j = e->parts[p].head, *n; j; j = n) {
            n = j->next_part;
            char k[32];
            snprintf(k, sizeof k, "%" PRId64, j->job_id);
            if (hmap_get(&seen, k) == NULL)
                hmap_put(&seen, k, j);
        }
        e->parts[p].head = e->parts[p].tail = NULL;
    }
    for (int i = 0; i < e->ndirty; i++) {
        char k[32];
        snprintf(k, sizeof k, "%" PRId64, e->dirty[i]->job_id);
        if (hmap_get(&seen, k) == NULL)
            hmap_put(&seen, k, e->dirty[i]);
    }
    e->ndirty = 0;
    it = 0;
    while (hmap_next(&seen, &it, &ent))
        job_free(ent->value);
    hmap_deinit(&seen);
    it = 0;
    while (hmap_next(&e->dests, &it, &ent)) {
        Dest *d = ent->value;
        d->ready_head = d->ready_tail = NULL;
    }
    e->pending = 0;
    free(e->flushing);
    e->flushing = NULL;
    e->nflushing = 0;
}

static void db_failed(Engine *e, const char *step, const Err *err)
{
    char q[1100];
    log_warn("db_error", "step=%s error=%s", step, log_quote(q, sizeof q, err ? err->msg : "?"));
    e->db_busy = false;
    e->state = ST_RESET;
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

static char *dup_val(PGresult *r, int row, int col)
{
    return xstrdup(PQgetvalue(r, row, col));
}

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
    for (int i = 0; i < n; i++) {
        RJob *j = xcalloc(1, sizeof(*j));
        j->job_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        j->partition = atoi(PQgetvalue(res, i, 1));
        j->workspace_id = dup_val(res, i, 2);
        j->source_id = dup_val(res, i, 3);
        j->dest_id = dup_val(res, i, 4);
        j->user_id = dup_val(res, i, 5);
        j->payload = dup_val(res, i, 7);
        if (j->partition < 0 || j->partition >= e->nparts) {
            job_free(j);
            continue;
        }
        Part *p = &e->parts[j->partition];
        p->read_cursor = j->job_id;
        got[j->partition]++;
        j->in_part = true;
        if (p->tail)
            p->tail->next_part = j;
        else
            p->head = j;
        p->tail = j;
        e->pending++;
        Dest *d = dest_get(e, j->dest_id);
        user_push(e, user_get(e, d, j->user_id), j);
    }
    e->claim_full = false;
    for (int p = 0; p < e->nparts; p++)
        if (got[p] >= per)
            e->claim_full = true;
    free(got);
    e->want_claim = e->claim_full;
    e->backoff_ms = 0;
    pump(e);
}

static void claim(Engine *e, DbConn *c)
{
    int *parts = xmalloc(sizeof(int) * (size_t)e->nparts);
    int64_t *cur = xmalloc(sizeof(int64_t) * (size_t)e->nparts);
    for (int i = 0; i < e->nparts; i++) {
        parts[i] = i;
        cur[i] = e->parts[i].read_cursor;
    }
    buf_reset(&e->sql);
    jobq_format_claim(&e->sql, JOBQ_RT, parts, cur, e->nparts, NULL,
                      e->cfg->router.claim_batch / e->nparts + 8);
    free(parts);
    free(cur);
    e->db_busy = true;
    e->want_claim = false;
    if (db_exec(c, e->sql.data, -1, NULL, NULL, 0, on_claimed, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send claim");
        db_failed(e, "claim", &er);
    }
}

static void put_time(Buf *b, int64_t ms)
{
    if (ms == 0) {
        buf_puts(b, "\\N");
        return;
    }
    /* COPY accepts epoch via a timestamptz literal: use ISO format */
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[64];
    size_t n = strftime(s, sizeof s, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(s + n, sizeof s - n, ".%03d+00", (int)(ms % 1000));
    buf_puts(b, s);
}

static void on_flushed(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "flush", err);
        return;
    }
    for (int i = 0; i < e->flush_n; i++)
        e->parts[e->flush_parts[i]].durable_cursor = e->flush_new[i];
    for (int i = 0; i < e->nflushing; i++) {
        RJob *j = e->flushing[i];
        if (j->flush_gen == e->flush_gen)
            j->flush_gen = 0;
        j->durable = true;
        job_maybe_free(e, j);
    }
    e->nflushing = 0;
    e->backoff_ms = 0;
    pump(e);
}

/* One transaction: retry-row upserts, deletes, dead letters, cursors. */
static void flush(Engine *e, DbConn *c)
{
    e->flush_gen++;
    if (e->flush_gen == 0)
        e->flush_gen = 1;
    gettimeofday(&e->flushed_at, NULL);
    buf_reset(&e->retry_rows);
    buf_reset(&e->dead_rows);
    buf_reset(&e->del_ids);
    free(e->flushing);
    e->flushing = xmalloc(sizeof(RJob *) * (size_t)(e->ndirty + 1));
    e->nflushing = 0;
    int ndel = 0;
    for (int i = 0; i < e->ndirty; i++) {
        RJob *j = e->dirty[i];
        j->dirty = false;
        j->flush_gen = e->flush_gen;
        e->flushing[e->nflushing++] = j;
        if (j->fate == FATE_PENDING && j->row) {
            Buf *b = &e->retry_rows;
            buf_printf(b, "%" PRId64 "\t%d\t", j->job_id, j->partition);
            jobq_copy_text(b, j->workspace_id);
            buf_putc(b, '\t');
            jobq_copy_text(b, j->source_id);
            buf_putc(b, '\t');
            jobq_copy_text(b, j->dest_id);
            buf_putc(b, '\t');
            jobq_copy_text(b, j->user_id);
            buf_putc(b, '\t');
            jobq_copy_text(b, j->payload);
            buf_printf(b, "\t%s\t%d\t", j->parked ? "t" : "f", j->attempts);
            put_time(b, j->first_failed_ms);
            buf_putc(b, '\t');
            put_time(b, j->next_retry_ms);
            buf_putc(b, '\t');
            if (j->last_status || j->last_error)
                buf_printf(b, "%d", j->last_status);
            else
                buf_puts(b, "\\N");
            buf_putc(b, '\t');
            jobq_copy_text(b, j->last_error);
            buf_putc(b, '\n');
        } else if (j->fate != FATE_PENDING) {
            buf_printf(&e->del_ids, ndel++ ? ",%" PRId64 : "%" PRId64, j->job_id);
            if (j->fate == FATE_DEAD) {
                DeadLetter dl = {"rt", j->job_id, "router", j->partition, j->workspace_id,
                                 j->source_id, j->dest_id, j->user_id, j->last_status,
                                 j->last_error, j->response, j->payload, j->attempts};
                jobq_copy_dead_letter(&e->dead_rows, &dl);
            }
        }
    }
    e->ndirty = 0;
    /* cursors: pass every job whose fate is durable or written by this flush */
    free(e->flush_parts);
    free(e->flush_old);
    free(e->flush_new);
    e->flush_parts = xmalloc(sizeof(int) * (size_t)e->nparts);
    e->flush_old = xmalloc(sizeof(int64_t) * (size_t)e->nparts);
    e->flush_new = xmalloc(sizeof(int64_t) * (size_t)e->nparts);
    e->flush_n = 0;
    for (int p = 0; p < e->nparts; p++) {
        Part *pt = &e->parts[p];
        int64_t upto = pt->durable_cursor;
        while (pt->head && (pt->head->durable || pt->head->flush_gen == e->flush_gen)) {
            RJob *j = pt->head;
            upto = j->job_id;
            pt->head = j->next_part;
            if (pt->head == NULL)
                pt->tail = NULL;
            j->in_part = false;
            j->next_part = NULL;
            job_maybe_free(e, j);
        }
        if (pt->head == NULL && pt->read_cursor > upto)
            upto = pt->read_cursor; /* nothing unresolved was read */
        if (upto != pt->durable_cursor) {
            e->flush_parts[e->flush_n] = p;
            e->flush_old[e->flush_n] = pt->durable_cursor;
            e->flush_new[e->flush_n] = upto;
            e->flush_n++;
        }
    }
    buf_reset(&e->sql);
    /* Asynchronous commit: if Postgres itself crashes, the last flushes may
     * be lost as a whole (they are atomic), and those jobs are delivered
     * again - the at-least-once delivery the router promises anyway. It
     * saves a WAL flush per status batch. */
    buf_puts(&e->sql, "BEGIN; SET LOCAL synchronous_commit = off;");
    int nc = 0;
    if (e->retry_rows.len > 0) {
        buf_puts(&e->sql,
                 "CREATE TEMP TABLE IF NOT EXISTS rt_retries_in (LIKE rt_retries) ON COMMIT DELETE ROWS;"
                 "COPY rt_retries_in (job_id, partition, workspace_id, source_id, destination_id,"
                 " user_id, payload, parked, attempts, first_failed_at, next_retry_at, last_status,"
                 " last_error) FROM STDIN;"
                 "INSERT INTO rt_retries SELECT * FROM rt_retries_in ON CONFLICT (job_id) DO UPDATE"
                 " SET parked = EXCLUDED.parked, attempts = EXCLUDED.attempts,"
                 " first_failed_at = EXCLUDED.first_failed_at, next_retry_at = EXCLUDED.next_retry_at,"
                 " last_status = EXCLUDED.last_status, last_error = EXCLUDED.last_error;");
        e->copies[nc++] = (DbCopy){e->retry_rows.data, e->retry_rows.len};
    }
    if (ndel > 0)
        buf_printf(&e->sql, "DELETE FROM rt_retries WHERE job_id = ANY('{%s}'::bigint[]);",
                   e->del_ids.data);
    if (e->dead_rows.len > 0) {
        buf_puts(&e->sql, JOBQ_SQL_COPY_DEAD_LETTERS);
        e->copies[nc++] = (DbCopy){e->dead_rows.data, e->dead_rows.len};
    }
    if (e->flush_n > 0) {
        jobq_format_advance(&e->sql, "router", e->flush_parts, e->flush_old, e->flush_new,
                            e->flush_n);
        buf_putc(&e->sql, ';');
    }
    buf_puts(&e->sql, "COMMIT");
    e->db_busy = true;
    if (db_exec(c, e->sql.data, -1, NULL, e->copies, nc, on_flushed, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send flush");
        db_failed(e, "flush", &er);
    }
}

static bool flush_needed(Engine *e)
{
    if (e->ndirty > 0)
        return true;
    for (int p = 0; p < e->nparts; p++) {
        Part *pt = &e->parts[p];
        if ((pt->head && pt->head->durable) || (pt->head == NULL && pt->read_cursor != pt->durable_cursor))
            return true;
    }
    return false;
}

static void on_retries_loaded(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Engine *e = arg;
    e->db_busy = false;
    if (err != NULL) {
        db_failed(e, "load_retries", err);
        return;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        RJob *j = xcalloc(1, sizeof(*j));
        j->job_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        j->partition = atoi(PQgetvalue(res, i, 1));
        j->workspace_id = dup_val(res, i, 2);
        j->source_id = dup_val(res, i, 3);
        j->dest_id = dup_val(res, i, 4);
        j->user_id = dup_val(res, i, 5);
        j->payload = dup_val(res, i, 6);
        j->parked = strcmp(PQgetvalue(res, i, 7), "t") == 0;
        j->attempts = atoi(PQgetvalue(res, i, 8));
        j->first_failed_ms = strtoll(PQgetvalue(res, i, 9), NULL, 10);
        j->next_retry_ms = strtoll(PQgetvalue(res, i, 10), NULL, 10);
        j->last_status = atoi(PQgetvalue(res, i, 11));
        j->row = true;
        j->durable = true;
        e->pending++;
        Dest *d = dest_get(e, j->dest_id);
        UserQ *u = user_get(e, d, j->user_id);
        /* rows are loaded in job order, so the queue rebuilds in order */
        j->uq = u;
        j->in_user = true;
        if (u->tail)
            u->tail->next_user = j;
        else
            u->head = j;
        u->tail = j;
        make_ready(u);
    }
    e->state = ST_UP;
    e->backoff_ms = 0;
    metrics_set(e->m_active, 1);
    log_info("leader", "stage=router partitions=%d retry_rows=%d", e->nparts, n);
    e->want_claim = true;
    pump(e);
}

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
    free(e->parts);
    e->nparts = n;
    e->parts = xcalloc((size_t)n, sizeof(Part));
    for (int i = 0; i < n; i++) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < n)
            e->parts[p].read_cursor = e->parts[p].durable_cursor = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    e->db_busy = true;
    if (db_exec(c, "SELECT job_id, partition, workspace_id, source_id, destination_id, user_id,"
                   " payload, parked, attempts,"
                   " coalesce((extract(epoch FROM first_failed_at) * 1000)::bigint, 0),"
                   " coalesce((extract(epoch FROM next_retry_at) * 1000)::bigint, 0),"
                   " coalesce(last_status, 0) FROM rt_retries ORDER BY job_id",
                -1, NULL, NULL, 0, on_retries_loaded, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send retry load");
        db_failed(e, "load_retries", &er);
    }
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
    e->db_busy = true;
    if (db_exec(c, "SELECT partition, last_job_id FROM cursors WHERE stage = 'router' ORDER BY partition",
                -1, NULL, NULL, 0, on_cursors, e) < 0) {
        Err er;
        err_set(&er, ERR_DB, "could not send cursor load");
        db_failed(e, "load_cursors", &er);
    }
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

static double since(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_usec - t->tv_usec) / 1e6;
}

/* Decides the next database operation (one at a time on the connection). */
static void db_step(Engine *e)
{
    if (e->db_busy)
        return;
    if (e->state == ST_RESET) {
        if (e->inflight > 0)
            return; /* wait for deliveries to come back before dropping state */
        reset_state(e);
        e->state = ST_DOWN;
    }
    if (e->state == ST_DOWN && e->stopping)
        return;
    struct timeval now;
    gettimeofday(&now, NULL);
    if ((e->state == ST_DOWN) && timercmp(&now, &e->next_db_try, <))
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
        e->db_busy = true;
        if (db_exec(c, "SELECT pg_try_advisory_lock(hashtext('pintle.stage.router'))", -1, NULL,
                    NULL, 0, on_locked, e) < 0) {
            Err er;
            err_set(&er, ERR_DB, "could not send lock");
            db_failed(e, "lock", &er);
        }
        return;
    }
    if (e->state != ST_UP) {
        db_conn_release(c);
        return;
    }
    if (flush_needed(e) &&
        (e->stopping || since(&e->flushed_at) * 1000 >= e->cfg->router.flush_interval_ms)) {
        flush(e, c);
        return;
    }
    if (!e->stopping && since(&e->maintained_at) * 1000 >= e->cfg->queue.maintenance_interval_ms) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT maintain_queue('rt', %lld, %d)",
                 (long long)e->cfg->queue.dataset_max_mb << 20, e->cfg->queue.dataset_max_age_s);
        e->db_busy = true;
        if (db_exec(c, sql, -1, NULL, NULL, 0, on_maintained, e) < 0) {
            Err er;
            err_set(&er, ERR_DB, "could not send maintenance");
            db_failed(e, "maintain", &er);
        }
        return;
    }
    if (!e->stopping && e->want_claim && e->pending < e->cfg->router.max_pending_jobs) {
        claim(e, c);
        return;
    }
    db_conn_release(c);
}

static void pump(Engine *e)
{
    dispatch(e);
    db_step(e);
    if (e->stopping && e->inflight == 0 && !e->db_busy &&
        (e->state != ST_UP || !flush_needed(e)) && e->stopped) {
        void (*cb)(void *) = e->stopped;
        e->stopped = NULL;
        cb(e->stopped_arg);
    }
}

/* Every 50 ms: wake users whose retry time came, flush, claim. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    static int ticks;
    int64_t now = now_ms();
    /* only users waiting for a retry time are looked at, not every user */
    for (UserQ **pp = &e->delayed; *pp;) {
        UserQ *u = *pp;
        if (u->head == NULL || u->head->next_retry_ms <= now) {
            *pp = u->next_delayed;
            u->delayed = false;
            u->next_delayed = NULL;
            if (u->head == NULL && !u->queued) {
                hmap_del(&e->users, u->key);
                free(u->key);
                free(u);
            } else if (!u->head->inflight) {
                make_ready(u);
            }
            continue;
        }
        pp = &u->next_delayed;
    }
    /* poll for new jobs even without hints */
    if (++ticks * 50 >= e->cfg->router.poll_interval_ms) {
        ticks = 0;
        e->want_claim = true;
    }
    metrics_set(e->m_pending, e->pending);
    metrics_set(e->m_inflight, e->inflight);
    pump(e);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    Engine *e = arg;
    e->want_claim = true;
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
    hmap_init(&e->dests);
    hmap_init(&e->users);
    buf_init(&e->sql);
    buf_init(&e->retry_rows);
    buf_init(&e->dead_rows);
    buf_init(&e->del_ids);
    gettimeofday(&e->maintained_at, NULL);
    e->m_pending = metrics_series(m, "pintle_router_pending_jobs", "rt jobs held in memory", METRIC_GAUGE, "");
    e->m_inflight = metrics_series(m, "pintle_router_inflight_requests", "Deliveries in flight", METRIC_GAUGE, "");
    e->m_active = metrics_series(m, "pintle_router_active", "1 when this instance holds the router lock", METRIC_GAUGE, "");
    e->tick = event_new(base, -1, EV_PERSIST, on_tick, e);
    struct timeval tv = {0, 50 * 1000};
    event_add(e->tick, &tv);
    e->kick_ev = event_new(base, -1, 0, on_kick, e);
    event_active(e->kick_ev, 0, 0);
    return e;
}

void engine_destroy(Engine *e)
{
    if (e == NULL)
        return;
    reset_state(e);
    size_t it = 0;
    HMapEntry *ent;
    while (hmap_next(&e->dests, &it, &ent)) {
        Dest *d = ent->value;
        free(d->id);
        free(d);
    }
    hmap_deinit(&e->dests);
    hmap_deinit(&e->users);
    free(e->dirty);
    free(e->parts);
    free(e->flush_parts);
    free(e->flush_old);
    free(e->flush_new);
    buf_deinit(&e->sql);
    buf_deinit(&e->retry_rows);
    buf_deinit(&e->dead_rows);
    buf_deinit(&e->del_ids);
    event_free(e->tick);
    event_free(e->kick_ev);
    free(e);
}

void engine_kick(Engine *e)
{
    event_active(e->kick_ev, 0, 0);
}

void engine_stop(Engine *e, void (*done)(void *), void *arg)
{
    e->stopping = true;
    e->stopped = done;
    e->stopped_arg = arg;
    pump(e);
}

bool engine_ready(const Engine *e, char *detail, size_t size)
{
    bool db = db_pool_connected(e->pool) > 0;
    snprintf(detail, size, "{\"db\":\"%s\",\"active\":%s,\"pending\":%d,\"inflight\":%d}",
             db ? "UP" : "DOWN", e->state == ST_UP ? "true" : "false", e->pending, e->inflight);
    return db;
}
