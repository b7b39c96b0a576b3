/* Partition leases (see lease.h). One tick at a time on the lease's own
 * connection; the database decides (lease_tick in sql/007_leases.sql), this
 * file keeps the answer and a local expiry: partitions stop being usable
 * lease.ttl_ms after the last successful tick was sent, which is before the
 * database lets anyone else take them. */
#include "common/lease.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/db.h"
#include "common/ids.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xalloc.h"

typedef struct Part {
    int64_t epoch; /* 0: not held */
    bool giving;   /* held, asked to be given back */
    bool quiesced; /* giving, and the caller is done with it: free at the next tick */
} Part;

struct Lease {
    struct event_base *base;
    const Config *cfg;
    char stage[32];
    char owner[160];
    char *info_json;
    DbPool *pool;
    struct event *tick_ev, *expiry_ev, *leave_ev, *leave_timer;
    Part *parts;
    int nparts;
    bool busy;    /* a tick or the leave runs on the connection */
    bool due;     /* a tick should run as soon as the connection is free */
    bool expired; /* no successful tick for ttl_ms: nothing is usable */
    bool leaving; /* lease_leave called: no more ticks */
    bool left;    /* done() ran */
    void (*changed)(void *);
    void *changed_arg;
    void (*leave_done)(void *);
    void *leave_arg;
    int64_t sent_ms;        /* monotonic time the tick in flight was sent */
    int64_t valid_until_ms; /* monotonic: nothing is usable from then on */
    bool failing;    /* the last tick failed (logged once per run of failures) */
    Buf params_release;
    char ttl_text[16], moves_text[16];
    MetricSeries *m_held, *m_giving, *m_acquired, *m_released, *m_lost, *m_rebalances, *m_errors;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void arm(struct event *ev, int ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

static void run_tick(Lease *l);
static void on_leave(evutil_socket_t fd, short what, void *arg);
static void on_leave_timeout(evutil_socket_t fd, short what, void *arg);

const char *lease_owner(const Lease *l)
{
    return l->owner;
}
const char *lease_stage(const Lease *l)
{
    return l->stage;
}
int lease_partitions(const Lease *l)
{
    return l->nparts;
}

bool lease_usable(const Lease *l, int p)
{
    /* the clock, not only the expiry timer: after a pause (SIGSTOP, swap)
     * other events may run before the timer does */
    return p >= 0 && p < l->nparts && !l->expired && !l->leaving && l->parts[p].epoch > 0 &&
           !l->parts[p].giving && mono_ms() < l->valid_until_ms;
}

int64_t lease_epoch(const Lease *l, int p)
{
    return p >= 0 && p < l->nparts ? l->parts[p].epoch : 0;
}

bool lease_giving(const Lease *l, int p)
{
    return p >= 0 && p < l->nparts && l->parts[p].epoch > 0 && l->parts[p].giving;
}

int lease_usable_list(const Lease *l, int *parts)
{
    int n = 0;
    if (l->expired || l->leaving || mono_ms() >= l->valid_until_ms)
        return 0;
    for (int p = 0; p < l->nparts; p++)
        if (l->parts[p].epoch > 0 && !l->parts[p].giving)
            parts[n++] = p;
    return n;
}

void lease_quiesced(Lease *l, int p)
{
    if (!lease_giving(l, p) || l->parts[p].quiesced)
        return;
    l->parts[p].quiesced = true;
    if (!l->leaving) {
        l->due = true;
        event_active(l->tick_ev, 0, 0);
    }
}

void lease_drain(Lease *l)
{
    size_t n = strlen(l->info_json);
    if (l->leaving || strstr(l->info_json, "\"stopping\"") != NULL || n == 0)
        return;
    char *info = xmalloc(n + 32);
    snprintf(info, n + 32, "%.*s,\"stopping\":true}", (int)(n - 1), l->info_json);
    free(l->info_json);
    l->info_json = info;
    l->due = true;
    event_active(l->tick_ev, 0, 0);
}

void lease_format_fence(const Lease *l, Buf *sql, const int *parts, int n)
{
    if (n <= 0)
        return;
    /* A consuming transaction never holds its lease rows locked for long
     * (e.g. a client paused in the middle of its COPY): a takeover skips
     * locked rows, so each statement is bounded by the lease TTL. */
    buf_printf(sql, "SET LOCAL statement_timeout = %d;", l->cfg->lease.ttl_ms);
    /* partitions in ascending order without duplicates, at their epochs */
    char *seen = xcalloc((size_t)l->nparts, 1);
    for (int i = 0; i < n; i++)
        if (parts[i] >= 0 && parts[i] < l->nparts)
            seen[parts[i]] = 1;
    buf_printf(sql, "SELECT lease_fence('%s','%s','{", l->stage, l->owner);
    bool first = true;
    for (int p = 0; p < l->nparts; p++)
        if (seen[p]) {
            buf_printf(sql, first ? "%d" : ",%d", p);
            first = false;
        }
    buf_puts(sql, "}','{");
    first = true;
    for (int p = 0; p < l->nparts; p++)
        if (seen[p]) {
            buf_printf(sql, first ? "%" PRId64 : ",%" PRId64, l->parts[p].epoch);
            first = false;
        }
    buf_puts(sql, "}');");
    free(seen);
}

void lease_format_fence_epochs(const Lease *l, Buf *sql, const int *parts, const int64_t *epochs,
                               int n)
{
    if (n <= 0)
        return;
    buf_printf(sql, "SELECT lease_fence('%s','%s','{", l->stage, l->owner);
    for (int i = 0; i < n; i++)
        buf_printf(sql, i ? ",%d" : "%d", parts[i]);
    buf_puts(sql, "}','{");
    for (int i = 0; i < n; i++)
        buf_printf(sql, i ? ",%" PRId64 : "%" PRId64, epochs[i]);
    buf_puts(sql, "}');");
}

bool lease_is_fenced(const Err *err)
{
    return err != NULL && strstr(err->msg, "sqlstate=PL409") != NULL;
}

static void count_held(Lease *l)
{
    int held = 0, giving = 0;
    for (int p = 0; p < l->nparts; p++)
        if (l->parts[p].epoch > 0) {
            held++;
            giving += l->parts[p].giving;
        }
    metrics_set(l->m_held, l->expired ? 0 : (double)held);
    metrics_set(l->m_giving, (double)giving);
}

static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
    Lease *l = arg;
    if (l->expired || l->leaving)
        return;
    int held = 0;
    for (int p = 0; p < l->nparts; p++)
        held += l->parts[p].epoch > 0;
    l->expired = true;
    count_held(l);
    if (held > 0) {
        log_warn("lease_expired", "stage=%s owner=%s partitions=%d ttl_ms=%d", l->stage, l->owner,
                 held, l->cfg->lease.ttl_ms);
        l->changed(l->changed_arg);
    }
}

static void tick_failed(Lease *l, const Err *err)
{
    metrics_inc(l->m_errors, 1);
    if (!l->failing) {
        char q[1100];
        log_warn("lease_renew_failed", "stage=%s owner=%s error=%s", l->stage, l->owner,
                 log_quote(q, sizeof q, err->msg));
    }
    l->failing = true;
}

static void on_ticked(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Lease *l = arg;
    l->busy = false;
    if (err != NULL || res == NULL) {
        Err e;
        if (err == NULL)
            err_set(&e, ERR_DB, "lease_tick returned no rows");
        tick_failed(l, err ? err : &e);
    } else {
        if (l->failing)
            log_info("lease_renewed", "stage=%s owner=%s", l->stage, l->owner);
        l->failing = false;
        Part *next = xcalloc((size_t)l->nparts, sizeof(Part));
        for (int i = 0; i < PQntuples(res); i++) {
            int p = atoi(PQgetvalue(res, i, 0));
            if (p < 0 || p >= l->nparts)
                continue;
            next[p].epoch = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            next[p].giving = PQgetvalue(res, i, 2)[0] == 't';
            /* a partition the caller let go of stays let go of until freed */
            if (l->parts[p].epoch == next[p].epoch && l->parts[p].giving) {
                next[p].giving = true;
                next[p].quiesced = l->parts[p].quiesced;
            }
        }
        /* usable again after a lapse, also one the expiry timer has not seen yet */
        bool changed = l->expired || mono_ms() >= l->valid_until_ms;
        int acquired = 0, released = 0, lost = 0;
        for (int p = 0; p < l->nparts; p++) {
            Part *o = &l->parts[p], *n = &next[p];
            if (o->epoch == n->epoch && o->giving == n->giving)
                continue;
            changed = true;
            if (o->epoch > 0 && o->epoch != n->epoch) {
                if (o->quiesced)
                    released++;
                else {
                    lost++;
                    log_warn("lease_lost", "stage=%s owner=%s partition=%d epoch=%" PRId64,
                             l->stage, l->owner, p, o->epoch);
                }
            }
            if (n->epoch > 0 && o->epoch != n->epoch)
                acquired++;
        }
        free(l->parts);
        l->parts = next;
        l->expired = false;
        l->valid_until_ms = l->sent_ms + l->cfg->lease.ttl_ms;
        arm(l->expiry_ev, (int)(l->sent_ms + l->cfg->lease.ttl_ms - mono_ms()));
        count_held(l);
        metrics_inc(l->m_acquired, acquired);
        metrics_inc(l->m_released, released);
        metrics_inc(l->m_lost, lost);
        if (acquired + released + lost > 0) {
            metrics_inc(l->m_rebalances, 1);
            int held = 0;
            for (int p = 0; p < l->nparts; p++)
                held += l->parts[p].epoch > 0;
            log_info("leases_changed", "stage=%s owner=%s held=%d acquired=%d released=%d lost=%d",
                     l->stage, l->owner, held, acquired, released, lost);
        }
        if (changed && !l->leaving)
            l->changed(l->changed_arg);
    }
    db_conn_release(c);
    if (l->leaving) {
        event_active(l->leave_ev, 0, 0);
        return;
    }
    if (l->due)
        run_tick(l);
}

static void run_tick(Lease *l)
{
    if (l->busy || l->leaving)
        return;
    DbConn *c = db_pool_acquire(l->pool);
    if (c == NULL) {
        l->due = true; /* runs from the idle callback once connected */
        return;
    }
    l->due = false;
    buf_reset(&l->params_release);
    buf_putc(&l->params_release, '{');
    bool first = true;
    for (int p = 0; p < l->nparts; p++)
        if (l->parts[p].epoch > 0 && l->parts[p].quiesced) {
            buf_printf(&l->params_release, first ? "%d" : ",%d", p);
            first = false;
        }
    buf_putc(&l->params_release, '}');
    const char *params[6] = {
        l->stage, l->owner, l->ttl_text, l->moves_text, l->params_release.data, l->info_json};
    l->sent_ms = mono_ms();
    l->busy = true;
    if (db_exec(c,
                "SELECT partition, epoch, give FROM lease_tick($1, $2, $3::int, $4::int, "
                "$5::int[], $6::jsonb)",
                6, params, NULL, 0, on_ticked, l) < 0) {
        l->busy = false;
        Err e;
        err_set(&e, ERR_DB, "could not send lease_tick");
        tick_failed(l, &e);
        db_conn_release(c);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    Lease *l = arg;
    if (l->leaving)
        return;
    if (l->busy) {
        l->due = true;
        return;
    }
    run_tick(l);
}

static void on_idle(void *arg)
{
    Lease *l = arg;
    if (l->leaving) {
        if (!l->busy)
            event_active(l->leave_ev, 0, 0);
        return;
    }
    if (l->due && !l->busy)
        run_tick(l);
}

Lease *lease_create(struct event_base *base, const Config *cfg, const char *stage,
                    const LeaseInfo *info, Metrics *metrics, void (*changed)(void *arg), void *arg)
{
    Lease *l = xcalloc(1, sizeof *l);
    l->base = base;
    l->cfg = cfg;
    snprintf(l->stage, sizeof l->stage, "%s", stage);
    char host[64];
    ids_host_name(host, sizeof host);
    char uuid[UUID_STR_LEN];
    ids_uuid_v4(uuid);
    /* host:pid:random, so ids sort by host and a restarted pid is a new owner */
    snprintf(l->owner, sizeof l->owner, "%s:%d:%.8s", host, (int)getpid(), uuid);
    for (char *s = l->owner; *s; s++)
        if (*s == '\'' || *s == '\\' || *s == ',' || *s == '{' || *s == '}' || *s == '"')
            *s = '_'; /* the owner appears in array and string literals */
    Buf b;
    buf_init(&b);
    buf_puts(&b, "{\"host\":");
    jsonu_put_string(&b, host);
    buf_printf(&b, ",\"pid\":%d,\"admin_address\":", (int)getpid());
    jsonu_put_string(&b, info && info->admin_address ? info->admin_address : "");
    buf_puts(&b, ",\"hint_endpoint\":");
    jsonu_put_string(&b, info && info->hint_endpoint ? info->hint_endpoint : "");
    buf_putc(&b, '}');
    l->info_json = buf_take(&b, NULL);
    buf_init(&l->params_release);
    snprintf(l->ttl_text, sizeof l->ttl_text, "%d", cfg->lease.ttl_ms);
    snprintf(l->moves_text, sizeof l->moves_text, "%d", cfg->lease.rebalance_max_moves);
    l->nparts = cfg->queue.partitions;
    l->parts = xcalloc((size_t)l->nparts, sizeof(Part));
    l->changed = changed;
    l->changed_arg = arg;
    char app[64];
    snprintf(app, sizeof app, "pintle-%s-lease", stage);
    l->pool = db_pool_create(base, &cfg->db, app, 1);
    db_pool_set_idle_cb(l->pool, on_idle, l);
    /* persistent: an early tick (event_active) keeps the period */
    l->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, l);
    l->expiry_ev = evtimer_new(base, on_expiry, l);
    l->leave_ev = event_new(base, -1, 0, on_leave, l);
    l->leave_timer = evtimer_new(base, on_leave_timeout, l);
    char labels[64];
    snprintf(labels, sizeof labels, "stage=\"%s\"", stage);
    l->m_held = metrics_series(metrics, "pintle_lease_partitions_held",
                               "partitions this instance holds a lease on", METRIC_GAUGE, labels);
    l->m_giving = metrics_series(metrics, "pintle_lease_partitions_giving",
                                 "held partitions being handed back to another instance",
                                 METRIC_GAUGE, labels);
    const char *help = "partitions that changed hands at this instance, by change";
    char lab[96];
    snprintf(lab, sizeof lab, "%s,change=\"acquired\"", labels);
    l->m_acquired =
        metrics_series(metrics, "pintle_lease_changes_total", help, METRIC_COUNTER, lab);
    snprintf(lab, sizeof lab, "%s,change=\"released\"", labels);
    l->m_released =
        metrics_series(metrics, "pintle_lease_changes_total", help, METRIC_COUNTER, lab);
    snprintf(lab, sizeof lab, "%s,change=\"lost\"", labels);
    l->m_lost = metrics_series(metrics, "pintle_lease_changes_total", help, METRIC_COUNTER, lab);
    l->m_rebalances =
        metrics_series(metrics, "pintle_lease_rebalances_total",
                       "renewals after which this instance held a different set of partitions",
                       METRIC_COUNTER, labels);
    l->m_errors = metrics_series(metrics, "pintle_lease_renew_errors_total",
                                 "lease renewals that failed", METRIC_COUNTER, labels);
    log_info("lease_instance", "stage=%s owner=%s ttl_ms=%d renew_interval_ms=%d", stage, l->owner,
             cfg->lease.ttl_ms, cfg->lease.renew_interval_ms);
    l->due = true;
    arm(l->tick_ev, cfg->lease.renew_interval_ms);
    return l;
}

static void leave_finish(Lease *l)
{
    if (l->left)
        return;
    l->left = true;
    event_del(l->leave_ev);
    event_del(l->leave_timer);
    memset(l->parts, 0, sizeof(Part) * (size_t)l->nparts);
    count_held(l);
    if (l->leave_done)
        l->leave_done(l->leave_arg);
}

static void on_left(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Lease *l = arg;
    l->busy = false;
    if (err != NULL) {
        char q[1100];
        log_warn("lease_leave_failed", "stage=%s owner=%s error=%s", l->stage, l->owner,
                 log_quote(q, sizeof q, err->msg));
    } else {
        log_info("leases_released", "stage=%s owner=%s partitions=%s", l->stage, l->owner,
                 res && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "0");
    }
    db_conn_release(c);
    leave_finish(l);
}

static void on_leave(evutil_socket_t fd, short what, void *arg)
{
    Lease *l = arg;
    if (l->left)
        return;
    if (l->busy)
        return; /* the tick in flight ends first and activates this again */
    DbConn *c = db_pool_acquire(l->pool);
    if (c == NULL)
        return; /* the idle callback activates this again once connected */
    const char *params[2] = {l->stage, l->owner};
    l->busy = true;
    if (db_exec(c, "SELECT lease_leave($1, $2)", 2, params, NULL, 0, on_left, l) < 0) {
        l->busy = false;
        db_conn_release(c);
        log_warn("lease_leave_failed", "stage=%s owner=%s error=\"could not send lease_leave\"",
                 l->stage, l->owner);
        leave_finish(l);
    }
}

static void on_leave_timeout(evutil_socket_t fd, short what, void *arg)
{
    Lease *l = arg;
    if (l->left)
        return;
    log_warn("lease_leave_failed", "stage=%s owner=%s error=\"timed out\"", l->stage, l->owner);
    leave_finish(l);
}

void lease_leave(Lease *l, void (*done)(void *arg), void *arg)
{
    if (l->leaving)
        return;
    l->leaving = true;
    l->leave_done = done;
    l->leave_arg = arg;
    event_del(l->tick_ev);
    event_del(l->expiry_ev);
    /* a timeout bounds it; activation runs it as soon as the connection is free */
    arm(l->leave_timer, l->cfg->lease.ttl_ms);
    event_active(l->leave_ev, 0, 0);
}

void lease_destroy(Lease *l)
{
    if (l == NULL)
        return;
    event_free(l->tick_ev);
    event_free(l->expiry_ev);
    event_free(l->leave_ev);
    event_free(l->leave_timer);
    db_pool_destroy(l->pool);
    buf_deinit(&l->params_release);
    free(l->info_json);
    free(l->parts);
    free(l);
}
