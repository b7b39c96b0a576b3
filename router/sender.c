/* Deliveries (see sender.h). A delivery's answer is classified by
 * delivery_classify: 2xx ok; 4xx other than 408/429 aborts at once; 5xx,
 * 408, 429, timeouts and network errors (recorded as 504, as RudderStack
 * does) are retried after the policy's
 * delay (retry.c) until both max_attempts and max_retry_minutes passed.
 * Answers are kept to 4 KiB and a few bytes (enough to see whether a
 * character crosses the 4 KiB mark); order.c stores them cut on a character
 * boundary and escaped where they are not UTF-8, so a destination's bytes
 * can never make a status flush fail. */
#include "router/sender.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>
#include <strings.h>

#include "common/hmap.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "router/batch.h"
#include "router/delivery.h"
#include "router/retry.h"

/* Bytes of a destination's answer kept: the stored 4,096 plus room for the
 * rest of a character that starts before the limit. */
#define SENDER_RESPONSE_BYTES (4096 + 4)
/* How soon a paused destination's job is looked at again. */
#define SENDER_PAUSED_RECHECK_MS 5000

/* Status classes of pintle_deliveries_total. */
/* No answer counts as 5xx: it is recorded as 504 (SENDER_NO_RESPONSE_STATUS). */
typedef enum StatusClass { CLASS_2XX, CLASS_3XX, CLASS_4XX, CLASS_5XX, CLASS_N } StatusClass;

/* The status of a delivery that got no answer (network error, timeout). */
#define SENDER_NO_RESPONSE_STATUS 504

/* Bytes of a /batch answer read at most. */
#define SENDER_BATCH_ANSWER_BYTES ((size_t)64 << 20)

typedef struct DestStats {
    MetricSeries *ok, *retry, *abort, *latency, *batches, *router_transforms;
    MetricSeries *by_class[CLASS_N];
} DestStats;

/* Ready jobs of one destination waiting for their /batch request (sent at
 * router.batch_max_jobs jobs or router.batch_max_wait_ms after the first)
 * or, for a transformAt router destination, their /routerTransform request
 * (router.router_transform_max_jobs, router.router_transform_max_wait_ms). */
typedef struct Group {
    struct Sender *s;
    bool router_transform;
    int max_jobs;
    char *dest_id;
    char *dest_type;
    char *dest_json;
    OrderJob **jobs;
    int njobs;
    struct event *timer;
} Group;

/* A job's outcome inside a batch: the worst of its requests' answers. */
typedef struct BatchJob {
    OrderJob *j;
    long status; /* 0 while nothing failed */
    char *why;
    char *resp;
    size_t resp_len;
    bool answered; /* listed by the /batch answer */
} BatchJob;

/* One /batch round: the transformer call, then the merged requests, each
 * job's outcome recorded once all of them returned. */
typedef struct Batch {
    struct Sender *s;
    bool router_transform; /* a /routerTransform round, not /batch */
    char *dest_id;
    BatchJob *jobs;
    int njobs;
    int pending; /* HTTP requests in flight (the /batch call or deliveries) */
    struct Part **parts; /* merged requests, NULL once returned */
    int nparts;
    struct Batch *prev, *next;
} Batch;

/* One merged request of a batch in flight. */
typedef struct Part {
    Batch *b;
    Delivery d;
    bool proxied;
    int *idx; /* indexes into b->jobs */
    int nidx;
} Part;

static void part_free(Part *pt)
{
    if (pt == NULL)
        return;
    delivery_deinit(&pt->d);
    free(pt->idx);
    free(pt);
}

typedef struct Attempt {
    struct Sender *s;
    OrderJob *j;
    Delivery d;
    bool proxied; /* sent to the transformer's delivery proxy */
    struct Attempt *prev, *next;
} Attempt;

struct Sender {
    const Config *cfg;
    RetryPolicy policy;
    Httpc *http;
    Metrics *m;
    Order *order;
    const Ops *ops;
    void (*after)(void *);
    void *arg;
    HMap stats; /* destination id -> DestStats */
    Attempt *attempts;
    int inflight; /* jobs whose delivery has not ended: attempts, groups, batches */
    bool discard;
    struct event_base *base;
    WsWatcher *ws;            /* borrowed; NULL when nothing is batched */
    char **batch_types;       /* router.batch_destination_types */
    int nbatch_types;
    char **proxy_types;       /* router.proxy_destination_types */
    int nproxy_types;
    char *transformer_url;    /* without a trailing slash */
    HMap groups;              /* destination id -> Group */
    Batch *batches;           /* in flight */
    char *batch_url;
    char *router_transform_url;
};

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static DestStats *stats_get(Sender *s, const char *dest_id)
{
    DestStats *st = hmap_get(&s->stats, dest_id);
    if (st != NULL)
        return st;
    st = xcalloc(1, sizeof(*st));
    char q[300], l[320];
    log_quote(q, sizeof q, dest_id);
    snprintf(l, sizeof l, "destination_id=%s", q);
    st->ok = metrics_series(s->m, "pintle_router_delivered_total", "Jobs delivered (2xx)",
                            METRIC_COUNTER, l);
    st->retry = metrics_series(s->m, "pintle_router_retries_total",
                               "Deliveries that failed and will be retried", METRIC_COUNTER, l);
    st->abort = metrics_series(s->m, "pintle_router_aborted_total",
                               "Jobs aborted into dead letters", METRIC_COUNTER, l);
    st->latency = metrics_series(s->m, "pintle_router_delivery_duration_seconds",
                                 "Delivery request latency", METRIC_HISTOGRAM, l);
    st->batches = metrics_series(s->m, "pintle_router_batch_requests_total",
                                 "Requests to the transformer's /batch", METRIC_COUNTER, l);
    st->router_transforms =
        metrics_series(s->m, "pintle_router_transform_requests_total",
                       "Requests to the transformer's /routerTransform", METRIC_COUNTER, l);
    static const char *const classes[CLASS_N] = {"2xx", "3xx", "4xx", "5xx"};
    char d[320];
    metrics_format_label(d, sizeof d, "destination", dest_id);
    for (int c = 0; c < CLASS_N; c++) {
        char lc[360];
        snprintf(lc, sizeof lc, "%s,status_class=\"%s\"", d, classes[c]);
        st->by_class[c] = metrics_series(s->m, "pintle_deliveries_total",
                                         "Delivery attempts by status class (no answer"
                                         " counts as 504)",
                                         METRIC_COUNTER, lc);
    }
    hmap_put(&s->stats, dest_id, st);
    return st;
}

/* Splits a comma-separated list into trimmed, non-empty items. */
static char **split_list(const char *text, int *n)
{
    char **items = NULL;
    *n = 0;
    const char *p = text ? text : "";
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len > 0) {
            items = xrealloc(items, sizeof(char *) * (size_t)(*n + 1));
            items[(*n)++] = xstrndup(p, len);
        }
        p = end ? end + 1 : p + strlen(p);
    }
    return items;
}

Sender *sender_create(struct event_base *base, const Config *cfg, Httpc *http, Metrics *m,
                      Order *order, WsWatcher *ws, void (*after)(void *), void *arg)
{
    Sender *s = xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    s->policy = retry_policy(&cfg->router);
    s->http = http;
    s->m = m;
    s->order = order;
    s->after = after;
    s->arg = arg;
    s->base = base;
    s->ws = ws;
    hmap_init(&s->stats);
    hmap_init(&s->groups);
    s->batch_types = split_list(cfg->router.batch_destination_types, &s->nbatch_types);
    const char *u = cfg->router.transformer_url;
    size_t ul = strlen(u);
    while (ul > 0 && u[ul - 1] == '/')
        ul--;
    s->batch_url = xasprintf("%.*s/batch", (int)ul, u);
    s->router_transform_url = xasprintf("%.*s/routerTransform", (int)ul, u);
    s->transformer_url = xstrndup(u, ul);
    s->proxy_types = split_list(cfg->router.proxy_destination_types, &s->nproxy_types);
    return s;
}

static void attempt_unlink(Sender *s, Attempt *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        s->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
    s->inflight--;
}

static void group_free(Group *g)
{
    if (g->timer)
        event_free(g->timer);
    free(g->dest_id);
    free(g->dest_type);
    free(g->dest_json);
    free(g->jobs);
    free(g);
}

static void part_free(struct Part *pt);

static void batch_free(Batch *b)
{
    for (int i = 0; i < b->nparts; i++)
        part_free(b->parts[i]);
    free(b->parts);
    for (int i = 0; i < b->njobs; i++) {
        free(b->jobs[i].why);
        free(b->jobs[i].resp);
    }
    free(b->jobs);
    free(b->dest_id);
    free(b);
}

/* Ends every group still waiting: its jobs are not delivered (as if lost in
 * flight), so their state stays as it was. */
static void groups_lose_all(Sender *s, int64_t now)
{
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&s->groups, &it, &e)) {
        Group *g = e->value;
        for (int i = 0; i < g->njobs; i++)
            order_lost(s->order, g->jobs[i], now);
        s->inflight -= g->njobs;
        group_free(g);
    }
    hmap_deinit(&s->groups);
    hmap_init(&s->groups);
}

void sender_destroy(Sender *s)
{
    if (s == NULL)
        return;
    int64_t now = now_ms();
    while (s->attempts) {
        Attempt *a = s->attempts;
        attempt_unlink(s, a);
        order_lost(s->order, a->j, now);
        delivery_deinit(&a->d);
        free(a);
    }
    groups_lose_all(s, now);
    /* batches in flight: the HTTP client is destroyed after this without
     * running their callbacks, which own the parts (freed with it) */
    while (s->batches) {
        Batch *b = s->batches;
        s->batches = b->next;
        for (int i = 0; i < b->njobs; i++)
            order_lost(s->order, b->jobs[i].j, now);
        batch_free(b);
    }
    hmap_deinit(&s->groups);
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&s->stats, &it, &e))
        free(e->value);
    hmap_deinit(&s->stats);
    for (int i = 0; i < s->nbatch_types; i++)
        free(s->batch_types[i]);
    free(s->batch_types);
    for (int i = 0; i < s->nproxy_types; i++)
        free(s->proxy_types[i]);
    free(s->proxy_types);
    free(s->transformer_url);
    free(s->batch_url);
    free(s->router_transform_url);
    free(s);
}

static void abort_job(Sender *s, OrderJob *j, int status, const char *why, const char *resp,
                      size_t resp_len, int64_t now)
{
    metrics_inc(stats_get(s, j->dest_id)->abort, 1);
    char q[600];
    log_warn("job_aborted", "job_id=%" PRId64 " destination_id=%s status=%d attempts=%d reason=%s",
             j->job_id, j->dest_id, status, j->attempts, log_quote(q, sizeof q, why));
    order_abort(s->order, j, status, why, resp, resp_len, now);
}

/* A failed attempt: retried after the policy's delay, or given up. */
static void fail_job(Sender *s, OrderJob *j, long status, const char *why, const char *resp,
                     size_t resp_len, int64_t now)
{
    order_note_failure(j, now);
    if (delivery_classify(status) == DELIVERY_ABORT) {
        abort_job(s, j, (int)status, why, resp, resp_len, now);
        return;
    }
    if (retry_exhausted(&s->policy, j->attempts, j->first_failed_ms, now)) {
        char w[600];
        snprintf(w, sizeof w, "retries exhausted after %d attempts: %s", j->attempts, why);
        abort_job(s, j, (int)status, w, resp, resp_len, now);
        return;
    }
    int64_t delay = retry_delay_ms(&s->policy, j->attempts);
    metrics_inc(stats_get(s, j->dest_id)->retry, 1);
    char q[600];
    log_info("job_retry",
             "job_id=%" PRId64 " destination_id=%s attempt=%d status=%ld retry_in_ms=%" PRId64
             " reason=%s",
             j->job_id, j->dest_id, j->attempts, status, delay, log_quote(q, sizeof q, why));
    order_retry(s->order, j, (int)status, why, now + delay, now);
}

static void count_class(DestStats *st, long status)
{
    long c = (status > 0 ? status : SENDER_NO_RESPONSE_STATUS) / 100;
    if (c >= 2 && c <= 5)
        metrics_inc(st->by_class[c - 2], 1);
}

static void on_delivered(void *arg, const HttpcResponse *r)
{
    Attempt *a = arg;
    Sender *s = a->s;
    OrderJob *j = a->j;
    bool proxied = a->proxied;
    attempt_unlink(s, a);
    delivery_deinit(&a->d);
    free(a);
    int64_t now = now_ms();
    DestStats *st = stats_get(s, j->dest_id);
    metrics_observe(st->latency, r->seconds);
    count_class(st, r->status);
    if (s->discard || order_job_dropped(j)) {
        /* state is being dropped, or its partition was (lease lost): the
         * answer is not recorded, the job's next owner delivers it again */
        log_debug("delivery_ignored", "job_id=%" PRId64 " destination_id=%s status=%ld", j->job_id,
                  j->dest_id, r->status);
        order_lost(s->order, j, now);
    } else if (r->status == 0) {
        /* no answer (connection, TLS, timeout): recorded as 504, the status
         * RudderStack's router gives a request that got no response */
        char why[512];
        snprintf(why, sizeof why, "no response: %s", r->error ? r->error : "network error");
        fail_job(s, j, SENDER_NO_RESPONSE_STATUS, why, NULL, 0, now);
    } else {
        Buf why;
        buf_init(&why);
        long status = r->status;
        if (proxied)
            status = batch_proxy_status(r->body, r->body_len, j->job_id, r->status, &why);
        if (delivery_classify(status) == DELIVERY_OK) {
            metrics_inc(st->ok, 1);
            log_debug("job_delivered", "job_id=%" PRId64 " destination_id=%s status=%ld",
                      j->job_id, j->dest_id, status);
            order_ok(s->order, j, now);
        } else {
            char w[600];
            if (proxied)
                snprintf(w, sizeof w, "delivery proxy: %ld: %.500s", status,
                         why.data ? why.data : "");
            else
                snprintf(w, sizeof w, "destination answered %ld", status);
            fail_job(s, j, status, w, r->body, r->body_len, now);
        }
        buf_deinit(&why);
    }
    s->after(s->arg);
}

/* j's destination in the workspace config, or NULL (no config kept, or the
 * destination is gone). */
static const WsDestination *dest_of(Sender *s, const OrderJob *j, const WsSource **src)
{
    if (s->ws == NULL)
        return NULL;
    const Workspace *ws = ws_watcher_get(s->ws);
    const WsSource *so = ws ? ws_source_by_id(ws, j->source_id) : NULL;
    const WsDestination *d = so ? ws_destination(so, j->dest_id) : NULL;
    if (d == NULL || d->def_name == NULL)
        return NULL;
    *src = so;
    return d;
}

static bool type_listed(char *const *types, int n, const char *type)
{
    for (int i = 0; i < n; i++)
        if (strcasecmp(types[i], type) == 0)
            return true;
    return false;
}

/* The request for payload on behalf of jobs: the payload itself, or, for a
 * destination of router.proxy_destination_types, a POST to the
 * transformer's /v1/destinations/<type>/proxy carrying it (*proxied set). */
static int prepare(Sender *s, Delivery *d, const char *payload, OrderJob *const *jobs, int n,
                   bool *proxied, Err *err)
{
    *proxied = false;
    const WsSource *so = NULL;
    const WsDestination *dest = s->nproxy_types > 0 ? dest_of(s, jobs[0], &so) : NULL;
    if (dest == NULL || !type_listed(s->proxy_types, s->nproxy_types, dest->def_name))
        return delivery_build(d, payload, err);
    memset(d, 0, sizeof(*d));
    buf_init(&d->url);
    buf_init(&d->body);
    strcpy(d->method, "POST");
    buf_printf(&d->url, "%s/v1/destinations/", s->transformer_url);
    for (const char *p = dest->def_name; *p; p++)
        buf_putc(&d->url, (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p));
    buf_puts(&d->url, "/proxy");
    json_object *cfg = jsonu_get_ci(dest->obj, "config");
    batch_format_proxy(&d->body, payload, jobs, n, cfg ? jsonu_to_string(cfg, NULL) : "{}");
    d->has_body = 1;
    d->headers = xcalloc(3, sizeof(char *));
    d->headers[0] = xstrdup("Content-Type: application/json");
    d->headers[1] = xasprintf("RdProxy-Timeout: %d", s->cfg->router.timeout_ms);
    d->nheaders = 2;
    *proxied = true;
    return 0;
}

/* ---- batches (router.batch_destination_types) ---- */

static void batch_unlink(Sender *s, Batch *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        s->batches = b->next;
    if (b->next)
        b->next->prev = b->prev;
}

/* Records a failure of job i of b; a retryable one wins over an abort (the
 * job is sent again whole), the first of a kind is kept. */
static void batch_job_fail(BatchJob *bj, long status, const char *why, const char *resp,
                           size_t resp_len)
{
    bool retry = delivery_classify(status) != DELIVERY_ABORT;
    bool had_retry = bj->status != 0 && delivery_classify(bj->status) != DELIVERY_ABORT;
    if (bj->status != 0 && (had_retry || !retry))
        return;
    bj->status = status;
    free(bj->why);
    free(bj->resp);
    bj->why = xstrdup(why);
    bj->resp = NULL;
    bj->resp_len = 0;
    if (resp != NULL && resp_len > 0) {
        bj->resp = xmalloc(resp_len + 1);
        memcpy(bj->resp, resp, resp_len);
        bj->resp[resp_len] = '\0';
        bj->resp_len = resp_len;
    }
}

/* Every request of b returned: each job's outcome is recorded. */
static void batch_finish(Sender *s, Batch *b)
{
    batch_unlink(s, b);
    int64_t now = now_ms();
    DestStats *st = stats_get(s, b->dest_id);
    for (int i = 0; i < b->njobs; i++) {
        BatchJob *bj = &b->jobs[i];
        OrderJob *j = bj->j;
        s->inflight--;
        if (s->discard || order_job_dropped(j)) {
            order_lost(s->order, j, now);
        } else if (bj->status == 0) {
            metrics_inc(st->ok, 1);
            log_debug("job_delivered", "job_id=%" PRId64 " destination_id=%s batched=true",
                      j->job_id, j->dest_id);
            order_ok(s->order, j, now);
        } else {
            fail_job(s, j, bj->status, bj->why, bj->resp, bj->resp_len, now);
        }
    }
    batch_free(b);
    s->after(s->arg);
}

static void on_part_delivered(void *arg, const HttpcResponse *r)
{
    Part *pt = arg;
    Batch *b = pt->b;
    Sender *s = b->s;
    DestStats *st = stats_get(s, b->dest_id);
    metrics_observe(st->latency, r->seconds);
    count_class(st, r->status);
    if (r->status == 0) {
        char why[512];
        snprintf(why, sizeof why, "no response: %s", r->error ? r->error : "network error");
        for (int k = 0; k < pt->nidx; k++)
            batch_job_fail(&b->jobs[pt->idx[k]], SENDER_NO_RESPONSE_STATUS, why, NULL, 0);
    } else {
        Buf pwhy;
        buf_init(&pwhy);
        for (int k = 0; k < pt->nidx; k++) {
            BatchJob *bj = &b->jobs[pt->idx[k]];
            long status = r->status;
            if (pt->proxied)
                status = batch_proxy_status(r->body, r->body_len, bj->j->job_id, r->status, &pwhy);
            if (delivery_classify(status) == DELIVERY_OK)
                continue;
            char why[600];
            if (pt->proxied)
                snprintf(why, sizeof why, "delivery proxy: %ld: %.500s", status,
                         pwhy.data ? pwhy.data : "");
            else
                snprintf(why, sizeof why, "destination answered %ld (batched request)", status);
            batch_job_fail(bj, status, why, r->body, r->body_len);
        }
        buf_deinit(&pwhy);
    }
    for (int i = 0; i < b->nparts; i++)
        if (b->parts[i] == pt)
            b->parts[i] = NULL;
    part_free(pt);
    if (--b->pending == 0)
        batch_finish(s, b);
}

static int batch_job_index(const Batch *b, int64_t job_id)
{
    for (int i = 0; i < b->njobs; i++)
        if (b->jobs[i].j->job_id == job_id)
            return i;
    return -1;
}

/* Starts one merged request for the jobs at idx (taken). */
static void part_start(Sender *s, Batch *b, const char *payload, int *idx, int nidx)
{
    Part *pt = xcalloc(1, sizeof(*pt));
    pt->b = b;
    pt->idx = idx;
    pt->nidx = nidx;
    Err err;
    OrderJob **jobs = xmalloc(sizeof(OrderJob *) * (size_t)(nidx + 1));
    for (int k = 0; k < nidx; k++)
        jobs[k] = b->jobs[idx[k]].j;
    int rc = nidx > 0 ? prepare(s, &pt->d, payload, jobs, nidx, &pt->proxied, &err)
                      : delivery_build(&pt->d, payload, &err);
    free(jobs);
    if (rc < 0) {
        for (int k = 0; k < nidx; k++)
            batch_job_fail(&b->jobs[idx[k]], 400, err.msg, NULL, 0);
        part_free(pt);
        return;
    }
    HttpcRequest req = {pt->d.method,
                        pt->d.url.data,
                        (const char *const *)pt->d.headers,
                        pt->d.has_body ? pt->d.body.data : NULL,
                        pt->d.body.len,
                        s->cfg->router.timeout_ms,
                        .max_response_bytes = SENDER_RESPONSE_BYTES,
                        .keep_prefix = true};
    if (httpc_start(s->http, &req, on_part_delivered, pt) < 0) {
        for (int k = 0; k < nidx; k++)
            batch_job_fail(&b->jobs[idx[k]], SENDER_NO_RESPONSE_STATUS,
                           "could not start the HTTP request", NULL, 0);
        part_free(pt);
        return;
    }
    b->parts = xrealloc(b->parts, sizeof(Part *) * (size_t)(b->nparts + 1));
    b->parts[b->nparts++] = pt;
    b->pending++;
}

/* The transformer's /batch or /routerTransform answer: its requests are
 * sent (a request naming several jobs is each job's outcome), its refusals
 * fail their jobs with the status it gave (4xx abort into dead letters,
 * others are retried), and a job it does not list is retried. */
static void on_batched(void *arg, const HttpcResponse *r)
{
    Batch *b = arg;
    Sender *s = b->s;
    const char *what = b->router_transform ? "/routerTransform" : "/batch";
    b->pending--;
    BatchOut *outs = NULL;
    int nouts = 0;
    Err err;
    if (s->discard) {
        /* nothing is sent: batch_finish hands every job to order_lost */
    } else if (r->status != 200) {
        char why[512];
        if (r->status == 0)
            snprintf(why, sizeof why, "transformer %s: no response: %s", what,
                     r->error ? r->error : "network error");
        else
            snprintf(why, sizeof why, "transformer %s answered %ld", what, r->status);
        /* the transformer's trouble, not the destination's: always retried */
        long status = r->status >= 500 ? r->status : SENDER_NO_RESPONSE_STATUS;
        for (int i = 0; i < b->njobs; i++)
            batch_job_fail(&b->jobs[i], status, why, r->status ? r->body : NULL,
                           r->status ? r->body_len : 0);
    } else if (batch_parse_answer(r->body, r->body_len, b->router_transform, &outs, &nouts,
                                  &err) < 0) {
        for (int i = 0; i < b->njobs; i++)
            batch_job_fail(&b->jobs[i], 500, err.msg, r->body, r->body_len);
    } else {
        for (int o = 0; o < nouts; o++) {
            int *idx = xmalloc(sizeof(int) * (size_t)(outs[o].njobs + 1));
            int nidx = 0;
            for (int k = 0; k < outs[o].njobs; k++) {
                int i = batch_job_index(b, outs[o].job_ids[k]);
                if (i < 0)
                    continue; /* not ours: ignored */
                b->jobs[i].answered = true;
                idx[nidx++] = i;
            }
            if (outs[o].status != 200 && delivery_classify(outs[o].status) == DELIVERY_OK) {
                /* another 2xx with nothing to send (298: filtered by the
                 * transformer): the job is done, as a processor filter is */
                for (int k = 0; k < nidx; k++)
                    log_debug("job_filtered", "job_id=%" PRId64 " destination_id=%s status=%d",
                              b->jobs[idx[k]].j->job_id, b->dest_id, outs[o].status);
                free(idx);
                continue;
            }
            if (outs[o].status != 200) {
                char why[512];
                snprintf(why, sizeof why, "transformer refused the job (%d): %s", outs[o].status,
                         outs[o].error ? outs[o].error : "no reason given");
                for (int k = 0; k < nidx; k++)
                    batch_job_fail(&b->jobs[idx[k]], outs[o].status, why, NULL, 0);
                free(idx);
                continue;
            }
            for (int q = 0; q < outs[o].nrequests; q++) {
                int *copy = xmalloc(sizeof(int) * (size_t)(nidx + 1));
                memcpy(copy, idx, sizeof(int) * (size_t)nidx);
                part_start(s, b, outs[o].requests[q], copy, nidx);
            }
            free(idx);
        }
        for (int i = 0; i < b->njobs; i++)
            if (!b->jobs[i].answered)
                batch_job_fail(&b->jobs[i], 500,
                               b->router_transform
                                   ? "the transformer's /routerTransform answer omits the job"
                                   : "the transformer's /batch answer omits the job",
                               NULL, 0);
        batch_outs_free(outs, nouts);
    }
    if (b->pending == 0)
        batch_finish(s, b);
}

/* Sends g's jobs to /batch; g is freed. Jobs whose partition was dropped
 * meanwhile are not sent. */
static void group_send(Sender *s, Group *g)
{
    hmap_del(&s->groups, g->dest_id);
    int64_t now = now_ms();
    Batch *b = xcalloc(1, sizeof(*b));
    b->s = s;
    b->router_transform = g->router_transform;
    b->dest_id = xstrdup(g->dest_id);
    b->jobs = xcalloc((size_t)g->njobs, sizeof(BatchJob));
    for (int i = 0; i < g->njobs; i++) {
        if (s->discard || order_job_dropped(g->jobs[i])) {
            order_lost(s->order, g->jobs[i], now);
            s->inflight--;
            continue;
        }
        b->jobs[b->njobs++].j = g->jobs[i];
    }
    if (b->njobs == 0) {
        batch_free(b);
        group_free(g);
        s->after(s->arg);
        return;
    }
    OrderJob **jobs = xmalloc(sizeof(OrderJob *) * (size_t)b->njobs);
    for (int i = 0; i < b->njobs; i++)
        jobs[i] = b->jobs[i].j;
    Buf body;
    buf_init(&body);
    batch_format_request(&body, g->dest_type, g->dest_json, jobs, b->njobs, b->router_transform);
    free(jobs);
    group_free(g);
    b->next = s->batches;
    if (s->batches)
        s->batches->prev = b;
    s->batches = b;
    DestStats *st = stats_get(s, b->dest_id);
    metrics_inc(b->router_transform ? st->router_transforms : st->batches, 1);
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    HttpcRequest req = {"POST",
                        b->router_transform ? s->router_transform_url : s->batch_url,
                        headers,
                        body.data,
                        body.len,
                        s->cfg->router.timeout_ms,
                        .max_response_bytes = SENDER_BATCH_ANSWER_BYTES,
                        .keep_prefix = false};
    log_debug("batch_sent", "destination_id=%s jobs=%d bytes=%zu router_transform=%s", b->dest_id,
              b->njobs, body.len, b->router_transform ? "true" : "false");
    b->pending = 1;
    if (httpc_start(s->http, &req, on_batched, b) < 0) {
        b->pending = 0;
        for (int i = 0; i < b->njobs; i++)
            batch_job_fail(&b->jobs[i], SENDER_NO_RESPONSE_STATUS,
                           "could not start the transformer request", NULL, 0);
        batch_finish(s, b);
    }
    buf_deinit(&body);
}

static void on_group_timer(evutil_socket_t fd, short what, void *arg)
{
    Group *g = arg;
    group_send(g->s, g);
}

/* j's destination when its jobs are grouped (transformAt router: *router
 * set; else a type of router.batch_destination_types), else NULL (also
 * when its destination is no longer in the workspace config). */
static const WsDestination *batched_dest(Sender *s, const OrderJob *j, const WsSource **src,
                                         bool *router)
{
    const WsDestination *d = dest_of(s, j, src);
    if (d == NULL)
        return NULL;
    *router = d->router_transform;
    if (d->router_transform)
        return d;
    return type_listed(s->batch_types, s->nbatch_types, d->def_name) ? d : NULL;
}

/* Adds j to its destination's group; true when it is batched. */
static bool group_add(Sender *s, OrderJob *j)
{
    const WsSource *so = NULL;
    bool router = false;
    const WsDestination *d = batched_dest(s, j, &so, &router);
    if (d == NULL)
        return false;
    Group *g = hmap_get(&s->groups, j->dest_id);
    if (g != NULL && g->router_transform != router)
        group_send(s, g); /* the definition changed: what waits goes as it was grouped */
    g = hmap_get(&s->groups, j->dest_id);
    if (g == NULL) {
        g = xcalloc(1, sizeof(*g));
        g->s = s;
        g->router_transform = router;
        g->max_jobs = router ? s->cfg->router.router_transform_max_jobs
                             : s->cfg->router.batch_max_jobs;
        g->dest_id = xstrdup(j->dest_id);
        g->dest_type = xstrdup(d->def_name);
        g->dest_json = ws_destination_format(so, d);
        g->jobs = xmalloc(sizeof(OrderJob *) * (size_t)g->max_jobs);
        hmap_put(&s->groups, g->dest_id, g);
    }
    g->jobs[g->njobs++] = j;
    s->inflight++;
    if (g->njobs >= g->max_jobs) {
        group_send(s, g);
    } else if (g->timer == NULL) {
        g->timer = evtimer_new(s->base, on_group_timer, g);
        int ms = router ? s->cfg->router.router_transform_max_wait_ms
                        : s->cfg->router.batch_max_wait_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(g->timer, &tv);
    }
    return true;
}

static void deliver(Sender *s, OrderJob *j, int64_t now)
{
    if (group_add(s, j))
        return;
    Attempt *a = xcalloc(1, sizeof(*a));
    a->s = s;
    a->j = j;
    Err err;
    if (prepare(s, &a->d, j->payload, &j, 1, &a->proxied, &err) < 0) {
        delivery_deinit(&a->d);
        free(a);
        order_note_failure(j, now);
        abort_job(s, j, 400, err.msg, NULL, 0, now);
        return;
    }
    HttpcRequest req = {a->d.method,
                        a->d.url.data,
                        (const char *const *)a->d.headers,
                        a->d.has_body ? a->d.body.data : NULL,
                        a->d.body.len,
                        s->cfg->router.timeout_ms,
                        .max_response_bytes = SENDER_RESPONSE_BYTES,
                        .keep_prefix = true};
    if (httpc_start(s->http, &req, on_delivered, a) < 0) {
        delivery_deinit(&a->d);
        free(a);
        fail_job(s, j, SENDER_NO_RESPONSE_STATUS, "could not start the HTTP request", NULL, 0, now);
        return;
    }
    a->next = s->attempts;
    if (s->attempts)
        s->attempts->prev = a;
    s->attempts = a;
    s->inflight++;
}

int sender_dispatch(Sender *s)
{
    if (s->discard)
        return 0;
    int64_t now = now_ms();
    int n = 0;
    OrderJob *j;
    while ((j = order_take_ready(s->order, now)) != NULL) {
        if (ops_paused(s->ops, j->dest_id)) {
            log_debug("job_held", "job_id=%" PRId64 " destination_id=%s reason=paused", j->job_id,
                      j->dest_id);
            order_retry(s->order, j, 0, "destination paused by an operator",
                        now + SENDER_PAUSED_RECHECK_MS, now);
            continue;
        }
        deliver(s, j, now);
        n++;
    }
    return n;
}

void sender_set_ops(Sender *s, const Ops *ops)
{
    s->ops = ops;
}

void sender_discard(Sender *s, bool on)
{
    s->discard = on;
    if (on)
        groups_lose_all(s, now_ms());
}

int sender_cancel(Sender *s)
{
    int n = s->inflight;
    s->discard = true;
    groups_lose_all(s, now_ms());
    httpc_cancel_all(s->http);
    return n;
}

int sender_inflight(const Sender *s)
{
    return s->inflight;
}
