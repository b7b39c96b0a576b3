/* Deliveries (see sender.h). A delivery's answer is classified by
 * delivery_classify: 2xx ok; 4xx other than 408/429 aborts at once; 5xx,
 * 408, 429, timeouts and network errors are retried after the policy's
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

#include "common/hmap.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "router/delivery.h"
#include "router/retry.h"

/* Bytes of a destination's answer kept: the stored 4,096 plus room for the
 * rest of a character that starts before the limit. */
#define SENDER_RESPONSE_BYTES (4096 + 4)
/* How soon a paused destination's job is looked at again. */
#define SENDER_PAUSED_RECHECK_MS 5000

/* Status classes of pintle_deliveries_total. */
typedef enum StatusClass { CLASS_2XX, CLASS_3XX, CLASS_4XX, CLASS_5XX, CLASS_NETWORK, CLASS_N } StatusClass;

typedef struct DestStats {
    MetricSeries *ok, *retry, *abort, *latency;
    MetricSeries *by_class[CLASS_N];
} DestStats;

typedef struct Attempt {
    struct Sender *s;
    OrderJob *j;
    Delivery d;
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
    int inflight;
    bool discard;
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
    static const char *const classes[CLASS_N] = {"2xx", "3xx", "4xx", "5xx", "network"};
    char d[320];
    metrics_format_label(d, sizeof d, "destination", dest_id);
    for (int c = 0; c < CLASS_N; c++) {
        char lc[360];
        snprintf(lc, sizeof lc, "%s,status_class=\"%s\"", d, classes[c]);
        st->by_class[c] = metrics_series(s->m, "pintle_deliveries_total",
                                         "Delivery attempts answered, by status class"
                                         " (network: no HTTP answer)",
                                         METRIC_COUNTER, lc);
    }
    hmap_put(&s->stats, dest_id, st);
    return st;
}

Sender *sender_create(const Config *cfg, Httpc *http, Metrics *m, Order *order,
                      void (*after)(void *), void *arg)
{
    Sender *s = xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    s->policy = retry_policy(&cfg->router);
    s->http = http;
    s->m = m;
    s->order = order;
    s->after = after;
    s->arg = arg;
    hmap_init(&s->stats);
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
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&s->stats, &it, &e))
        free(e->value);
    hmap_deinit(&s->stats);
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

static void on_delivered(void *arg, const HttpcResponse *r)
{
    Attempt *a = arg;
    Sender *s = a->s;
    OrderJob *j = a->j;
    attempt_unlink(s, a);
    delivery_deinit(&a->d);
    free(a);
    int64_t now = now_ms();
    DestStats *st = stats_get(s, j->dest_id);
    metrics_observe(st->latency, r->seconds);
    long c = r->status / 100;
    metrics_inc(st->by_class[c >= 2 && c <= 5 ? (int)(c - 2) : CLASS_NETWORK], 1);
    if (s->discard || order_job_dropped(j)) {
        /* state is being dropped, or its partition was (lease lost): the
         * answer is not recorded, the job's next owner delivers it again */
        log_debug("delivery_ignored", "job_id=%" PRId64 " destination_id=%s status=%ld", j->job_id,
                  j->dest_id, r->status);
        order_lost(s->order, j, now);
    } else if (delivery_classify(r->status) == DELIVERY_OK) {
        metrics_inc(st->ok, 1);
        log_debug("job_delivered", "job_id=%" PRId64 " destination_id=%s status=%ld", j->job_id,
                  j->dest_id, r->status);
        order_ok(s->order, j, now);
    } else {
        char why[512];
        if (r->status == 0)
            snprintf(why, sizeof why, "%s", r->error ? r->error : "network error");
        else
            snprintf(why, sizeof why, "destination answered %ld", r->status);
        fail_job(s, j, r->status, why, r->status ? r->body : NULL, r->body_len, now);
    }
    s->after(s->arg);
}

static void deliver(Sender *s, OrderJob *j, int64_t now)
{
    Attempt *a = xcalloc(1, sizeof(*a));
    a->s = s;
    a->j = j;
    Err err;
    if (delivery_build(&a->d, j->payload, &err) < 0) {
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
        fail_job(s, j, 0, "could not start the HTTP request", NULL, 0, now);
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
}

int sender_cancel(Sender *s)
{
    int n = s->inflight;
    s->discard = true;
    httpc_cancel_all(s->http);
    return n;
}

int sender_inflight(const Sender *s)
{
    return s->inflight;
}
