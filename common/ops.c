/* Operations state of a consuming stage (see ops.h).
 *
 * One operation at a time on the one connection: the start record first
 * (retried until it succeeds), then on each tick the poll (check_restarts,
 * mode, paused destinations) and, when due, the statistics. Queue depth
 * and lag: queue_stats reads, per leased partition, at most ops.stats_cap
 * rows beyond the cursor in job id order (an index range scan); the lag is
 * the age of the oldest of them, so the cost follows the backlog up to the
 * cap and never the size of the datasets. The router's pending work also
 * counts its rt_retries rows (retrying heads and parked jobs, which are
 * past its cursor): retry_stats, a scan of the failing work only. */
#include "common/ops.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/buf.h"
#include "common/db.h"
#include "common/hmap.h"
#include "common/jobq.h"
#include "common/log.h"
#include "common/xalloc.h"

#define OPS_LOCK_TIMEOUT_MS "1000"
#define SQLSTATE_LOCK_NOT_AVAILABLE "55P03"

typedef enum OpsStep { STEP_NONE, STEP_START, STEP_POLL, STEP_STATS, STEP_LEAVE } OpsStep;

/* The gauges of one destination of this stage. */
typedef struct DestGauges {
    MetricSeries *pending, *lag, *retrying, *parked, *paused;
} DestGauges;

struct Ops {
    struct event_base *base;
    const Config *cfg;
    char stage[32];
    Lease *lease;
    Metrics *m;
    void (*changed)(void *);
    void *arg;
    DbPool *pool;
    struct event *tick;
    OpsStep step;
    long long start_id; /* 0: not recorded yet */
    char start_id_text[24];
    bool known;    /* the mode was read once: until then nothing is forwarded */
    bool degraded;
    char reason[256];
    HMap paused; /* destination id -> (void *)1 */
    char *paused_text; /* as last read, to see changes */
    struct timeval stats_at;
    bool db_ok;
    bool lock_waited; /* the last query gave up on a lock (logged once) */
    HMap dests; /* destination id -> DestGauges */
    HMap queues; /* queue -> MetricSeries (datasets) */
    HMap stages; /* stage -> MetricSeries (dead letters) */
    HMap unowned; /* stage -> MetricSeries (partitions no instance leases) */
    MetricSeries *m_normal, *m_degraded, *m_db_up, *m_db_bytes;
    Buf sql;
    char limit[16], window[16], grace[16], cap[16];
    void (*left)(void *);
    void *left_arg;
    int *parts;
};

static void arm(Ops *o)
{
    int ms = o->cfg->ops.poll_interval_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(o->tick, &tv);
}

static void set_mode_metrics(Ops *o)
{
    metrics_set(o->m_normal, o->known && !o->degraded ? 1 : 0);
    metrics_set(o->m_degraded, o->known && o->degraded ? 1 : 0);
}

static DestGauges *dest_gauges(Ops *o, const char *dest)
{
    DestGauges *g = hmap_get(&o->dests, dest);
    if (g != NULL)
        return g;
    g = xcalloc(1, sizeof *g);
    char st[64], d[300], l[400];
    metrics_format_label(st, sizeof st, "stage", o->stage);
    metrics_format_label(d, sizeof d, "destination", dest);
    snprintf(l, sizeof l, "%s,%s", st, d);
    g->pending = metrics_series(o->m, "pintle_queue_pending_jobs",
                                "Jobs of the stage not yet handed on, per destination (beyond"
                                " the cursors, counted up to ops.stats_cap per partition; the"
                                " router's also in rt_retries)",
                                METRIC_GAUGE, l);
    g->lag = metrics_series(o->m, "pintle_queue_lag_seconds",
                            "Age of the oldest pending job of the stage, per destination",
                            METRIC_GAUGE, l);
    if (strcmp(o->stage, "router") == 0) {
        g->retrying =
            metrics_series(o->m, "pintle_retrying_jobs",
                           "Jobs waiting for a retry (heads in rt_retries)", METRIC_GAUGE, l);
        g->parked =
            metrics_series(o->m, "pintle_parked_jobs",
                           "Jobs parked behind a failing job of their user", METRIC_GAUGE, l);
    }
    hmap_put(&o->dests, dest, g);
    return g;
}

static MetricSeries *keyed(Ops *o, HMap *map, const char *name, const char *help,
                           const char *label, const char *key)
{
    MetricSeries *s = hmap_get(map, key);
    if (s == NULL) {
        char l[300];
        metrics_format_label(l, sizeof l, label, key);
        s = metrics_series(o->m, name, help, METRIC_GAUGE, l);
        hmap_put(map, key, s);
    }
    return s;
}

static void zero_map(HMap *map, bool dests)
{
    size_t i = 0;
    HMapEntry *e;
    while (hmap_next(map, &i, &e)) {
        if (!dests) {
            metrics_set(e->value, 0);
            continue;
        }
        DestGauges *g = e->value;
        metrics_set(g->pending, 0);
        metrics_set(g->lag, 0);
        if (g->retrying) {
            metrics_set(g->retrying, 0);
            metrics_set(g->parked, 0);
        }
    }
}

static void db_error(Ops *o, const char *step, const Err *err)
{
    char q[1100];
    if (o->db_ok)
        log_warn("ops_db_error", "step=%s error=%s", step, log_quote(q, sizeof q, err->msg));
    o->db_ok = false;
    metrics_set(o->m_db_up, 0);
}

static void on_stats(Ops *o, PGresult *res)
{
    zero_map(&o->dests, true);
    zero_map(&o->queues, false);
    zero_map(&o->stages, false);
    zero_map(&o->unowned, false);
    for (int i = 0; i < PQntuples(res); i++) {
        const char *kind = PQgetvalue(res, i, 0);
        const char *key = PQgetvalue(res, i, 1);
        double n = strtod(PQgetvalue(res, i, 2), NULL);
        double age = PQgetisnull(res, i, 3) ? 0 : strtod(PQgetvalue(res, i, 3), NULL);
        double parked = strtod(PQgetvalue(res, i, 4), NULL);
        if (age < 0)
            age = 0;
        if (kind[0] == 'q' || kind[0] == 'r') {
            DestGauges *g = dest_gauges(o, key);
            metrics_inc(g->pending, n + parked);
            if (age > g->lag->value)
                metrics_set(g->lag, age);
            if (kind[0] == 'r' && g->retrying) {
                metrics_set(g->retrying, n);
                metrics_set(g->parked, parked);
            }
        } else if (kind[0] == 'd') {
            metrics_set(keyed(o, &o->queues, "pintle_datasets", "Datasets (tables) per queue",
                              "queue", key),
                        n);
        } else if (kind[0] == 'l') {
            metrics_set(keyed(o, &o->stages, "pintle_dead_letters",
                              "Dead letters not replayed, by the stage that wrote them", "stage",
                              key),
                        n);
        } else if (kind[0] == 's') {
            metrics_set(o->m_db_bytes, n);
        } else if (kind[0] == 'u') {
            metrics_set(keyed(o, &o->unowned, "pintle_lease_partitions_unowned",
                              "Partitions of a stage no live instance leases (the same on every"
                              " instance: use max)",
                              "stage", key),
                        n);
        }
    }
}

/* Replaces the paused set when the list read differs. */
static bool on_paused(Ops *o, const char *text)
{
    if (o->paused_text && strcmp(o->paused_text, text) == 0)
        return false;
    size_t i = 0;
    HMapEntry *e;
    while (hmap_next(&o->dests, &i, &e)) {
        DestGauges *g = e->value;
        if (g->paused)
            metrics_set(g->paused, 0);
    }
    hmap_deinit(&o->paused);
    hmap_init(&o->paused);
    free(o->paused_text);
    o->paused_text = xstrdup(text);
    char *copy = xstrdup(text);
    for (char *save = NULL, *d = strtok_r(copy, "\n", &save); d; d = strtok_r(NULL, "\n", &save)) {
        hmap_put(&o->paused, d, (void *)1);
        DestGauges *g = dest_gauges(o, d);
        if (g->paused == NULL) {
            char l[300];
            metrics_format_label(l, sizeof l, "destination", d);
            g->paused = metrics_series(o->m, "pintle_destination_paused",
                                       "1 while an operator paused the destination",
                                       METRIC_GAUGE, l);
        }
        metrics_set(g->paused, 1);
    }
    free(copy);
    return true;
}

static void left(Ops *o);
static void try_leave(Ops *o, DbConn *c);

static void on_done(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Ops *o = arg;
    OpsStep step = o->step;
    o->step = STEP_NONE;
    if (step == STEP_LEAVE) {
        if (err != NULL)
            db_error(o, "record_stop", err);
        left(o);
        return;
    }
    if (step == STEP_START && err == NULL && res && PQntuples(res) == 1) {
        o->start_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        snprintf(o->start_id_text, sizeof o->start_id_text, "%lld", o->start_id);
        log_info("start_recorded", "stage=%s start_id=%lld", o->stage, o->start_id);
    }
    if (o->left) { /* stopping: the stop is recorded next */
        try_leave(o, c);
        return;
    }
    if (err != NULL && strstr(err->msg, "sqlstate=" SQLSTATE_LOCK_NOT_AVAILABLE) != NULL) {
        /* the database answers: a dataset is locked, this round is skipped */
        if (!o->lock_waited) {
            char q[1100];
            log_warn("ops_lock_timeout", "step=%s error=%s",
                     step == STEP_START ? "record_start" : step == STEP_POLL ? "poll" : "stats",
                     log_quote(q, sizeof q, err->msg));
        }
        o->lock_waited = true;
        if (step == STEP_STATS)
            gettimeofday(&o->stats_at, NULL);
        return;
    }
    if (err != NULL) {
        db_error(o, step == STEP_START ? "record_start" : step == STEP_POLL ? "poll" : "stats",
                 err);
        return;
    }
    if (!o->db_ok)
        log_info("ops_db_up", "stage=%s", o->stage);
    o->db_ok = true;
    metrics_set(o->m_db_up, 1);
    if (step == STEP_START && o->start_id != 0) {
        evtimer_del(o->tick); /* the first poll at once: nothing is forwarded until it answered */
        struct timeval now = {0, 0};
        evtimer_add(o->tick, &now);
    } else if (step == STEP_POLL && res && PQntuples(res) == 1) {
        bool degraded = strcmp(PQgetvalue(res, 0, 0), "degraded") == 0;
        bool changed = degraded != o->degraded || !o->known;
        o->known = true;
        snprintf(o->reason, sizeof o->reason, "%s", PQgetvalue(res, 0, 1));
        if (changed) {
            char q[600];
            o->degraded = degraded;
            if (degraded)
                log_warn("mode_changed", "mode=degraded reason=%s",
                         log_quote(q, sizeof q, o->reason));
            else
                log_info("mode_changed", "mode=normal reason=%s",
                         log_quote(q, sizeof q, o->reason));
            set_mode_metrics(o);
        }
        changed |= on_paused(o, PQgetvalue(res, 0, 2));
        if (changed && o->changed)
            o->changed(o->arg);
    } else if (step == STEP_STATS && res) {
        if (o->lock_waited)
            log_info("ops_stats_resumed", "stage=%s", o->stage);
        o->lock_waited = false;
        gettimeofday(&o->stats_at, NULL);
        on_stats(o, res);
    }
}

static double since_ms(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) * 1000 + (double)(now.tv_usec - t->tv_usec) / 1000;
}

static void ops_send(Ops *o, DbConn *c, OpsStep step, const char *sql, int n, const char **params)
{
    o->step = step;
    if (db_exec(c, sql, n, params, NULL, 0, on_done, o) < 0) {
        o->step = STEP_NONE;
        Err e;
        err_set(&e, ERR_DB, "could not send the operations query");
        db_error(o, "send", &e);
        db_conn_release(c);
    }
}

static void stats(Ops *o, DbConn *c)
{
    int n = lease_usable_list(o->lease, o->parts);
    buf_reset(&o->sql); /* the partitions parameter: valid until the callback */
    buf_puts(&o->sql, "{");
    for (int i = 0; i < n; i++)
        buf_printf(&o->sql, "%s%d", i ? "," : "", o->parts[i]);
    buf_puts(&o->sql, "}");
    static const char *const sql =
        "SELECT 'q'::text, destination_id, pending::float8,"
        " extract(epoch FROM now() - oldest)::float8, 0::float8"
        " FROM queue_stats($1, $2::int[], $3::int)"
        " UNION ALL SELECT 'r', destination_id, retrying, extract(epoch FROM now() - oldest),"
        " parked FROM retry_stats($2::int[]) WHERE $1 = 'router'"
        " UNION ALL SELECT 'd', queue, count(*), NULL, 0 FROM datasets GROUP BY queue"
        " UNION ALL SELECT 'l', stage, count(*), NULL, 0 FROM dead_letters"
        " WHERE replayed_at IS NULL GROUP BY stage"
        " UNION ALL SELECT 's', '', pg_database_size(current_database()), NULL, 0"
        /* partitions nobody leases, for the stages that should run: one
         * with a live instance or a start not gracefully stopped (running
         * or crashed) in the last day; a stage scaled to 0 on purpose is
         * not reported */
        " UNION ALL SELECT 'u', l.stage, count(*) FILTER (WHERE l.owner IS NULL"
        " OR l.expires_at < now()), NULL, 0 FROM leases l"
        " WHERE EXISTS (SELECT 1 FROM instances i WHERE i.stage = l.stage)"
        " OR EXISTS (SELECT 1 FROM starts s WHERE s.stage = l.stage AND s.stopped_at IS NULL)"
        " GROUP BY l.stage";
    const char *params[3] = {o->stage, o->sql.data, o->cap};
    ops_send(o, c, STEP_STATS, sql, 3, params);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    Ops *o = arg;
    arm(o);
    if (o->step != STEP_NONE || o->left)
        return;
    DbConn *c = db_pool_acquire(o->pool);
    if (c == NULL) {
        if (db_pool_connected(o->pool) == 0 && o->db_ok) {
            o->db_ok = false;
            metrics_set(o->m_db_up, 0);
        }
        return;
    }
    if (o->start_id == 0) {
        const char *params[2] = {o->stage, lease_owner(o->lease)};
        ops_send(o, c, STEP_START, "SELECT record_start($1, $2)", 2, params);
        return;
    }
    if (o->known && since_ms(&o->stats_at) >= o->cfg->ops.stats_interval_ms) {
        gettimeofday(&o->stats_at, NULL);
        stats(o, c);
        return;
    }
    const char *params[3] = {o->limit, o->window, o->grace};
    ops_send(o, c, STEP_POLL, "SELECT mode, reason, paused FROM poll_mode($1::int, $2::int, $3::int)",
             3, params);
}

Ops *ops_create(struct event_base *base, const Config *cfg, const char *stage, Lease *lease,
                Metrics *m, void (*changed)(void *), void *arg)
{
    Ops *o = xcalloc(1, sizeof *o);
    o->base = base;
    o->cfg = cfg;
    snprintf(o->stage, sizeof o->stage, "%s", stage);
    o->lease = lease;
    o->m = m;
    o->changed = changed;
    o->arg = arg;
    hmap_init(&o->paused);
    hmap_init(&o->dests);
    hmap_init(&o->queues);
    hmap_init(&o->stages);
    hmap_init(&o->unowned);
    buf_init(&o->sql);
    o->parts = xcalloc((size_t)lease_partitions(lease) + 1, sizeof(int));
    snprintf(o->limit, sizeof o->limit, "%d", cfg->ops.restart_limit);
    snprintf(o->window, sizeof o->window, "%d", cfg->ops.restart_window_s);
    snprintf(o->grace, sizeof o->grace, "%d", cfg->lease.ttl_ms);
    snprintf(o->cap, sizeof o->cap, "%d", cfg->ops.stats_cap);
    char app[64];
    snprintf(app, sizeof app, "pintle-%s-ops", stage);
    /* the operations queries never queue behind a lock on a dataset (an
     * operator's LOCK TABLE, maintenance dropping it): the mode must stay
     * readable, and statistics are skipped for a round instead */
    o->pool = db_pool_create_with(base, &cfg->db, app, 1, "-c lock_timeout=" OPS_LOCK_TIMEOUT_MS);
    o->m_normal = metrics_series(m, "pintle_mode", "1 for the current mode of the pipeline",
                                 METRIC_GAUGE, "mode=\"normal\"");
    if (strcmp(stage, "processor") == 0)
        dest_gauges(o, ""); /* gw jobs: destination "", exported from the start */
    o->m_degraded = metrics_series(m, "pintle_mode", "1 for the current mode of the pipeline",
                                   METRIC_GAUGE, "mode=\"degraded\"");
    o->m_db_up = metrics_series(m, "pintle_db_up",
                                "1 while the database answers this process' operations queries",
                                METRIC_GAUGE, "");
    o->m_db_bytes = metrics_series(m, "pintle_postgres_database_bytes",
                                   "Size of the database holding the jobs schema", METRIC_GAUGE,
                                   "");
    set_mode_metrics(o);
    gettimeofday(&o->stats_at, NULL);
    o->stats_at.tv_sec -= 3600; /* first statistics right after the start record */
    o->tick = evtimer_new(base, on_tick, o);
    struct timeval now = {0, 0};
    evtimer_add(o->tick, &now);
    return o;
}

void ops_destroy(Ops *o)
{
    if (o == NULL)
        return;
    db_pool_destroy(o->pool);
    event_free(o->tick);
    size_t i = 0;
    HMapEntry *e;
    while (hmap_next(&o->dests, &i, &e))
        free(e->value);
    hmap_deinit(&o->dests);
    hmap_deinit(&o->paused);
    hmap_deinit(&o->queues);
    hmap_deinit(&o->stages);
    hmap_deinit(&o->unowned);
    free(o->paused_text);
    buf_deinit(&o->sql);
    free(o->parts);
    free(o);
}

bool ops_degraded(const Ops *o)
{
    return o != NULL && (!o->known || o->degraded);
}

bool ops_paused(const Ops *o, const char *destination_id)
{
    return o != NULL && hmap_get(&o->paused, destination_id) != NULL;
}

const char *ops_mode(const Ops *o)
{
    if (o != NULL && !o->known)
        return "unknown";
    return ops_degraded(o) ? "degraded" : "normal";
}

const char *ops_reason(const Ops *o)
{
    return o ? o->reason : "";
}

static void left(Ops *o)
{
    void (*cb)(void *) = o->left;
    o->left = NULL;
    if (cb)
        cb(o->left_arg);
}

static void on_left_now(evutil_socket_t fd, short what, void *arg)
{
    left(arg);
}

/* Records the stop once the connection is free; done at once without one. */
static void try_leave(Ops *o, DbConn *c)
{
    if (o->step != STEP_NONE)
        return; /* on_done comes back here */
    if (c == NULL && o->start_id != 0)
        c = db_pool_acquire(o->pool);
    if (c == NULL || o->start_id == 0) {
        event_base_once(o->base, -1, EV_TIMEOUT, on_left_now, o, NULL);
        return;
    }
    const char *params[1] = {o->start_id_text};
    ops_send(o, c, STEP_LEAVE, "UPDATE starts SET stopped_at = now() WHERE id = $1::bigint", 1,
         params);
    if (o->step == STEP_NONE) /* could not send */
        event_base_once(o->base, -1, EV_TIMEOUT, on_left_now, o, NULL);
}

void ops_leave(Ops *o, void (*done)(void *), void *arg)
{
    o->left = done;
    o->left_arg = arg;
    evtimer_del(o->tick);
    try_leave(o, NULL);
}
