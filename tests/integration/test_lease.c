/* Integration tests of partition leases (common/lease.c, sql/007_leases.sql)
 * on a real, private Postgres (tests/integration/run.sh sets PINTLE_DB_DSN):
 * one instance takes every partition; a second one joining gets half of
 * them handed over; the fence refuses a transaction of an instance that does
 * not hold the partition at that epoch; a dead instance's partitions are
 * taken after the TTL; leaving frees them at once; a fenced transaction
 * holds off a takeover until it ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/lease.h"
#include "common/metrics.h"
#include "common/migrate.h"

#define P      8
#define SCHEMA "lease_it"

static Config g_cfg;
static struct event_base *g_base;
static Metrics *g_metrics;

typedef struct Inst {
    Lease *lease;
    int changes;
    bool left;
} Inst;

/* The app side of an idle instance: gives back at once what it is asked to. */
static void on_changed(void *arg)
{
    Inst *in = arg;
    in->changes++;
    for (int p = 0; p < P; p++)
        if (lease_giving(in->lease, p))
            lease_quiesced(in->lease, p);
}

static void on_left(void *arg)
{
    Inst *in = arg;
    in->left = true;
}

static int usable(const Inst *in)
{
    int parts[P];
    return in->lease ? lease_usable_list(in->lease, parts) : 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the loop until cond(a, b) holds or seconds pass; returns elapsed seconds or -1. */
static double run_until(bool (*cond)(Inst *, Inst *), Inst *a, Inst *b, double seconds)
{
    double t0 = now_s();
    while (now_s() - t0 < seconds) {
        if (cond(a, b))
            return now_s() - t0;
        struct timeval tv = {0, 20000};
        event_base_loopexit(g_base, &tv);
        event_base_dispatch(g_base);
    }
    return cond(a, b) ? now_s() - t0 : -1;
}

static bool a_has_all(Inst *a, Inst *b)
{
    return usable(a) == P;
}
static bool split_even(Inst *a, Inst *b)
{
    return usable(a) == P / 2 && usable(b) == P / 2;
}
static bool b_has_all(Inst *a, Inst *b)
{
    return usable(b) == P;
}
static bool a_left(Inst *a, Inst *b)
{
    return a->left;
}

static PGconn *pg_open(void)
{
    Err err;
    PGconn *pg = db_connect_blocking(&g_cfg.db, "it", &err);
    if (pg == NULL)
        fail_msg("%s", err.msg);
    return pg;
}

static long long scalar(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Runs the fence of l for partitions parts in a transaction; returns the SQLSTATE or "". */
static const char *fence_n(PGconn *pg, const Lease *l, const int *parts, int n, bool keep_open)
{
    static char state[8];
    Buf sql;
    buf_init(&sql);
    buf_puts(&sql, "BEGIN;");
    lease_format_fence(l, &sql, parts, n);
    if (!keep_open)
        buf_puts(&sql, "COMMIT");
    PGresult *r = PQexec(pg, sql.data);
    buf_deinit(&sql);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(state, sizeof state, "%s", s ? s : "");
    PQclear(r);
    if (state[0])
        PQclear(PQexec(pg, "ROLLBACK"));
    return state;
}

static const char *fence(PGconn *pg, const Lease *l, int p, bool keep_open)
{
    return fence_n(pg, l, &p, 1, keep_open);
}

static void test_leases(void **st)
{
    PGconn *pg = pg_open();
    PQclear(
        PQexec(pg, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS " SCHEMA " CASCADE"));
    Err err;
    assert_true(migrate_run(pg, SCHEMA, P, &err) >= 1);
    PQclear(PQexec(pg, "SET search_path = " SCHEMA));

    Inst a = {0}, b = {0};
    LeaseInfo info = {"127.0.0.1:1", ""};
    a.lease = lease_create(g_base, &g_cfg, "router", &info, g_metrics, on_changed, &a);
    assert_true(run_until(a_has_all, &a, &b, 10) >= 0);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM instances WHERE stage = 'router'"), 1);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM leases WHERE stage = 'processor' AND "
                                "owner IS NOT NULL"),
                     0);

    /* a second instance joins: half of the partitions are handed over */
    b.lease = lease_create(g_base, &g_cfg, "router", &info, g_metrics, on_changed, &b);
    double t = run_until(split_even, &a, &b, 10);
    assert_true(t >= 0);
    fprintf(stderr, "# join rebalanced in %.2f s\n", t);

    /* the fence: the owner passes, the other instance is refused */
    int pa = -1;
    for (int p = 0; p < P && pa < 0; p++)
        if (lease_usable(a.lease, p))
            pa = p;
    assert_true(pa >= 0);
    assert_string_equal(fence(pg, a.lease, pa, false), "");
    assert_string_equal(fence(pg, b.lease, pa, false), "PL409");

    /* a dies (no leave): b takes everything after the TTL */
    int64_t old_epoch = lease_epoch(a.lease, pa);
    PGconn *held = pg_open();
    PQclear(PQexec(held, "SET search_path = " SCHEMA));
    lease_destroy(a.lease);
    a.lease = NULL;
    t = run_until(b_has_all, &a, &b, 10);
    assert_true(t >= 0);
    fprintf(stderr, "# takeover after death in %.2f s (ttl %d ms)\n", t, g_cfg.lease.ttl_ms);
    assert_true(lease_epoch(b.lease, pa) > old_epoch);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM instances WHERE stage = 'router'"), 1);

    /* a fenced transaction that stays open holds off any takeover of its
     * partitions, and does not hold up the owner's renewals */
    Inst c = {0};
    int all[P];
    for (int p = 0; p < P; p++)
        all[p] = p;
    assert_string_equal(fence_n(held, b.lease, all, P, true), "");
    c.lease = lease_create(g_base, &g_cfg, "router", &info, g_metrics, on_changed, &c);
    run_until(split_even, &b, &c, 2.0 * g_cfg.lease.ttl_ms / 1000);
    /* c took nothing; b gave back its half (a release does not wait for the
     * lock) and kept renewing the rest: past two TTLs it still holds them */
    assert_int_equal(usable(&c), 0);
    assert_int_equal(usable(&b), P / 2);
    PQclear(PQexec(held, "COMMIT"));
    PQfinish(held);
    assert_true(run_until(split_even, &b, &c, 10) >= 0);

    /* leaving frees at once; the other takes over at its next tick */
    b.left = false;
    lease_leave(b.lease, on_left, &b);
    assert_true(run_until(a_left, &b, &c, 5) >= 0);
    assert_int_equal(usable(&b), 0);
    t = run_until(b_has_all, &a, &c, 5);
    assert_true(t >= 0);
    assert_true(t * 1000 < g_cfg.lease.ttl_ms);
    fprintf(stderr, "# handover after leave in %.2f s\n", t);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM instances WHERE stage = 'router'"), 1);

    /* a draining instance takes nothing and gives back what it is asked
     * to: the other takes all while the drainer is still alive */
    Inst d = {0};
    d.lease = lease_create(g_base, &g_cfg, "router", &info, g_metrics, on_changed, &d);
    assert_true(run_until(split_even, &c, &d, 10) >= 0);
    lease_drain(c.lease);
    assert_true(run_until(b_has_all, &c, &d, 5) >= 0);
    assert_int_equal(usable(&c), 0);
    lease_destroy(b.lease);
    lease_destroy(c.lease);
    lease_destroy(d.lease);
    PQfinish(pg);
}

int main(void)
{
    Err err;
    if (cfg_load(&g_cfg, NULL, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    free(g_cfg.db.schema);
    g_cfg.db.schema = strdup(SCHEMA);
    g_cfg.queue.partitions = P;
    g_cfg.lease.ttl_ms = 1500;
    g_cfg.lease.renew_interval_ms = 200;
    g_cfg.lease.rebalance_max_moves = 2;
    g_base = event_base_new();
    g_metrics = metrics_create();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leases),
    };
    int rc = cmocka_run_group_tests_name("lease-postgres", tests, NULL, NULL);
    metrics_destroy(g_metrics);
    event_base_free(g_base);
    cfg_deinit(&g_cfg);
    return rc;
}
