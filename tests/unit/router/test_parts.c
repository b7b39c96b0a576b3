/* Tests router/parts.c and the fence of router/flush.c with a real lease
 * (common/lease.c) on Postgres (PINTLE_DB_DSN, set by make integration;
 * skipped without it): a partition dropped by a fenced flush is not opened
 * again while its orphaned deliveries are in flight, and a flush is fenced
 * with the epochs its partitions' state was opened under. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/cfg.h"
#include "common/lease.h"
#include "common/metrics.h"
#include "common/migrate.h"
#include "router/flush.h"
#include "router/order.h"
#include "router/parts.h"

#define P      4
#define SCHEMA "test_router_parts"

static const OrderLimits LIMITS = {
    .max_jobs = 100, .max_inflight_per_dest = 8, .max_held_per_dest = 100, .spill_after_ms = 60000};

typedef struct World {
    Config cfg;
    struct event_base *base;
    Metrics *metrics;
    PGconn *pg;
    Lease *lease;
    Order *order;
    Parts *parts;
} World;

static void on_changed(void *arg)
{
    (void)arg; /* the test follows the lease itself */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the loop until the lease shows partition p at an epoch other than
 * not_epoch and every partition is usable, or 10 s pass. */
static bool run_until_epoch(World *w, int p, int64_t not_epoch)
{
    double t0 = now_s();
    int parts[P];
    while (now_s() - t0 < 10) {
        if (lease_epoch(w->lease, p) > 0 && lease_epoch(w->lease, p) != not_epoch &&
            lease_usable_list(w->lease, parts) == P)
            return true;
        struct timeval tv = {0, 20000};
        event_base_loopexit(w->base, &tv);
        event_base_dispatch(w->base);
    }
    return false;
}

static PGresult *exec_stmt(World *w, const StoreStmt *st)
{
    return PQexecParams(w->pg, st->sql, st->nparams, NULL, st->params, NULL, NULL, 0);
}

/* Sends the cursor query for the partitions wanted and pushes its result. */
static int load(World *w)
{
    if (!parts_load_wanted(w->parts))
        return 0;
    StoreStmt st;
    parts_format_load(w->parts, &st);
    PGresult *r = exec_stmt(w, &st);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PartsChange ch = parts_push_load(w->parts, r, 0);
    PQclear(r);
    return ch.opened;
}

static World *world_open(void)
{
    const char *dsn = getenv("PINTLE_DB_DSN");
    if (dsn == NULL || *dsn == '\0')
        return NULL;
    World *w = calloc(1, sizeof(*w));
    Err err = {0};
    assert_int_equal(cfg_load(&w->cfg, NULL, &err), 0);
    free(w->cfg.db.schema);
    w->cfg.db.schema = strdup(SCHEMA);
    w->cfg.queue.partitions = P;
    w->cfg.lease.ttl_ms = 3000;
    w->cfg.lease.renew_interval_ms = 100;
    w->pg = PQconnectdb(dsn);
    assert_int_equal(PQstatus(w->pg), CONNECTION_OK);
    PQclear(PQexec(w->pg,
                   "SET client_min_messages = warning; DROP SCHEMA IF EXISTS " SCHEMA " CASCADE"));
    assert_true(migrate_run(w->pg, SCHEMA, P, &err) > 0);
    PQclear(PQexec(w->pg, "SET search_path TO " SCHEMA ", public"));
    w->base = event_base_new();
    w->metrics = metrics_create();
    LeaseInfo info = {"127.0.0.1:1", ""};
    w->lease = lease_create(w->base, &w->cfg, "router", &info, w->metrics, on_changed, w);
    assert_true(run_until_epoch(w, 0, 0));
    w->order = order_create(&LIMITS, P);
    w->parts = parts_create(w->lease, w->order);
    parts_follow(w->parts, false, 0);
    assert_int_equal(load(w), P);
    return w;
}

static void world_close(World *w)
{
    parts_destroy(w->parts);
    order_destroy(w->order);
    lease_destroy(w->lease);
    metrics_destroy(w->metrics);
    event_base_free(w->base);
    PQfinish(w->pg);
    cfg_deinit(&w->cfg);
    free(w);
}

static OrderJob *deliver(World *w, int64_t id, int part, const char *user)
{
    OrderJob *j = order_job_create(id, part, "ws", "src", "d", user, "{}", 2);
    assert_true(order_push_claimed(w->order, j, ORDER_ROWS_NONE, 0));
    OrderJob *t = order_take_ready(w->order, 0);
    assert_ptr_equal(t, j);
    return t;
}

/* A fenced flush drops partitions 0 and 1 (say 1 was lost, 0 is still
 * ours) while a delivery of each is in flight: neither is opened again
 * (loaded from its cursor, delivering those jobs again) until its orphan
 * returned; each return makes parts_fresh false, and the next follow opens
 * that one alone. */
static void test_fenced_partition_waits_for_its_orphans(void **state)
{
    World *w = world_open();
    if (w == NULL)
        skip();
    OrderJob *a = deliver(w, 1, 0, "a"), *b = deliver(w, 2, 1, "b");
    int fenced[] = {0, 1};
    parts_fenced(w->parts, fenced, 2);
    assert_int_equal(parts_open(w->parts), P - 2);
    parts_follow(w->parts, false, 0);
    assert_false(parts_load_wanted(w->parts)); /* their first attempts may still land */
    assert_true(parts_fresh(w->parts));

    order_ok(w->order, a, 0); /* a's answer: not recorded, its slot is free */
    assert_false(parts_fresh(w->parts));
    parts_follow(w->parts, false, 0);
    assert_int_equal(load(w), 1);
    assert_true(order_partition_open(w->order, 0));
    assert_false(order_partition_open(w->order, 1));
    assert_true(parts_fresh(w->parts));

    order_lost(w->order, b, 0);
    assert_false(parts_fresh(w->parts));
    parts_follow(w->parts, false, 0);
    assert_int_equal(load(w), 1);
    assert_int_equal(parts_open(w->parts), P);
    world_close(w);
}

/* Runs a flush of w's order state; returns its SQLSTATE ("" committed). */
static const char *run_flush(World *w, Flusher *f)
{
    static char state[8];
    StoreStmt st;
    flusher_format(f, &st);
    assert_int_equal(st.ncopies, 0); /* cursor moves only */
    PGresult *r = PQexec(w->pg, st.sql);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(state, sizeof state, "%s", s ? s : "");
    PQclear(r);
    if (state[0])
        PQclear(PQexec(w->pg, "ROLLBACK"));
    else
        flusher_done(f, 0);
    return state;
}

/* The lease loses partition 0 and takes it again (a new epoch) before the
 * router followed it: a flush of the state opened in the earlier term is
 * refused, though the lease holds the partition now. */
static void test_flush_fenced_at_the_epoch_state_was_opened_under(void **state)
{
    World *w = world_open();
    if (w == NULL)
        skip();
    Flusher *f = flusher_create(&w->cfg.router, w->order, w->lease, w->parts);
    order_ok(w->order, deliver(w, 1, 1, "b"), 0);
    assert_string_equal(run_flush(w, f), ""); /* held at that epoch: committed */

    int64_t e0 = parts_epoch(w->parts, 0);
    assert_true(e0 > 0);
    PQclear(PQexec(w->pg, "UPDATE leases SET owner = NULL, expires_at = '-infinity'"
                          " WHERE stage = 'router' AND partition = 0"));
    assert_true(run_until_epoch(w, 0, e0)); /* taken again by this instance */
    assert_true(lease_epoch(w->lease, 0) > e0);
    assert_int_equal(parts_epoch(w->parts, 0), e0); /* not followed yet */

    order_ok(w->order, deliver(w, 2, 0, "a"), 0);
    assert_string_equal(run_flush(w, f), "PL409");
    flusher_destroy(f);
    world_close(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fenced_partition_waits_for_its_orphans),
        cmocka_unit_test(test_flush_fenced_at_the_epoch_state_was_opened_under),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
