/* Integration tests of the hint topology (common/hint.c) on a real, private
 * Postgres (tests/integration/run.sh sets PINTLE_DB_DSN): every consumer
 * binds its own endpoint and is listed in the instances table; publishers
 * discover the live ones of their stage and connect to each, so two
 * subscribers of one stage both receive the hints of two publishers; an
 * instance that expires is disconnected; static tcp:// loopback lists work
 * without a database; two instances can never share one endpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/ids.h"
#include "common/migrate.h"

#define SCHEMA "it_hint"
#define NSUBS  4
#define NPUBS  2

static Config g_cfg;

static void exec_ok(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static PGconn *fresh_schema(void)
{
    free(g_cfg.db.schema);
    g_cfg.db.schema = strdup(SCHEMA);
    Err err;
    PGconn *pg = db_connect_blocking(&g_cfg.db, "it-hint", &err);
    if (pg == NULL)
        fail_msg("%s", err.msg);
    exec_ok(pg, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
    if (migrate_run(pg, SCHEMA, 8, &err) < 0)
        fail_msg("%s", err.msg);
    return pg;
}

/* What the lease heartbeat writes (sql/007_leases.sql): one live row per instance. */
static void register_instance(PGconn *pg, const char *stage, const char *id, const char *endpoint,
                              const char *expires)
{
    char host[64];
    ids_host_name(host, sizeof host);
    const char *params[5] = {stage, id, endpoint, expires, host};
    PGresult *r = PQexecParams(pg,
                               "INSERT INTO instances (stage, instance_id, hint_endpoint, expires_at,"
                               " host) VALUES ($1, $2, $3, now() + $4::interval, $5)",
                               5, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("insert instance: %s", PQresultErrorMessage(r));
    PQclear(r);
}

typedef struct Sub {
    HintSub *h;
    unsigned from; /* bit i: a hint of publisher i arrived */
    int count;
} Sub;

typedef struct World World;
struct World {
    struct event_base *base;
    struct event *tick;
    HintPub *pubs[NPUBS];
    Sub subs[NSUBS];
    bool sending;
    bool (*done)(World *w);
    int ticks_left;
};

static void on_hint(void *arg, const char *topic)
{
    Sub *s = arg;
    int i = -1;
    if (sscanf(topic, "gw:%d", &i) == 1 && i >= 0 && i < NPUBS)
        s->from |= 1u << i;
    s->count++;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    World *w = arg;
    if (w->sending)
        for (int i = 0; i < NPUBS; i++) {
            char topic[16];
            snprintf(topic, sizeof topic, "gw:%d", i);
            hint_pub_send(w->pubs[i], topic);
        }
    if (w->done(w) || --w->ticks_left <= 0)
        event_base_loopbreak(w->base);
}

/* Runs the loop until done(w) holds or 10 s passed; returns done(w). */
static bool run_until(World *w, bool (*done)(World *w), bool sending)
{
    w->done = done;
    w->sending = sending;
    w->ticks_left = 500;
    struct timeval tv = {0, 20 * 1000};
    if (w->tick == NULL)
        w->tick = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    event_add(w->tick, &tv);
    event_base_dispatch(w->base);
    event_del(w->tick);
    return done(w);
}

static bool pubs_have_two(World *w)
{
    return hint_pub_peers(w->pubs[0]) == 2 && hint_pub_peers(w->pubs[1]) == 2;
}

static bool pubs_have_one(World *w)
{
    return hint_pub_peers(w->pubs[0]) == 1 && hint_pub_peers(w->pubs[1]) == 1;
}

static bool both_subs_from_both_pubs(World *w)
{
    return w->subs[0].from == 3 && w->subs[1].from == 3;
}

static bool first_sub_got_twenty(World *w)
{
    return w->subs[0].count >= 20;
}

static void open_sub(World *w, int i, const char *bind_tmpl, const char *stage)
{
    Err err;
    w->subs[i].h = hint_sub_open(w->base, bind_tmpl, NULL, stage, on_hint, &w->subs[i], &err);
    if (w->subs[i].h == NULL)
        fail_msg("%s", err.msg);
}

static void test_discovered_subscribers(void **state)
{
    PGconn *pg = fresh_schema();
    World w = {.base = event_base_new()};
    /* A and B: live processors; C: a processor whose heartbeat expired; D: a router */
    open_sub(&w, 0, "ipc:///tmp/pintle-it-hint-a-%s-%p.ipc", "processor");
    open_sub(&w, 1, "ipc:///tmp/pintle-it-hint-b-%s-%p.ipc", "processor");
    open_sub(&w, 2, "ipc:///tmp/pintle-it-hint-c-%s-%p.ipc", "processor");
    open_sub(&w, 3, "ipc:///tmp/pintle-it-hint-d-%s-%p.ipc", "router");
    register_instance(pg, "processor", "a", hint_sub_endpoint(w.subs[0].h), "1 minute");
    register_instance(pg, "processor", "b", hint_sub_endpoint(w.subs[1].h), "1 minute");
    register_instance(pg, "processor", "c", hint_sub_endpoint(w.subs[2].h), "-1 second");
    register_instance(pg, "router", "d", hint_sub_endpoint(w.subs[3].h), "1 minute");
    register_instance(pg, "processor", "e", "", "1 minute"); /* receives no hints */
    char paths[NSUBS][256];
    for (int i = 0; i < NSUBS; i++)
        snprintf(paths[i], sizeof paths[i], "%s",
                 hint_sub_endpoint(w.subs[i].h) + strlen("ipc://"));

    /* two publishers (e.g. two gateways) sharing one pool connection, so a
     * lookup also has to wait for the other's */
    DbPool *pool = db_pool_create(w.base, &g_cfg.db, "it-hint", 1);
    Err err;
    for (int i = 0; i < NPUBS; i++) {
        w.pubs[i] = hint_pub_open(w.base, "processor", "", pool, 100, &err);
        assert_non_null(w.pubs[i]);
    }
    assert_true(run_until(&w, pubs_have_two, false));
    assert_true(run_until(&w, both_subs_from_both_pubs, true));
    assert_int_equal(w.subs[2].count, 0); /* expired: not connected */
    assert_int_equal(w.subs[3].count, 0); /* another stage */
    assert_int_equal(hint_pub_peers(w.pubs[0]), 2);
    assert_int_equal(hint_pub_peers(w.pubs[1]), 2);

    /* B's heartbeat expires (killed): both publishers drop it */
    exec_ok(pg, "UPDATE instances SET expires_at = now() - interval '1 second'"
                " WHERE instance_id = 'b'");
    assert_true(run_until(&w, pubs_have_one, false));
    for (int i = 0; i < NSUBS; i++)
        w.subs[i].count = 0;
    assert_true(run_until(&w, first_sub_got_twenty, true));
    assert_int_equal(w.subs[1].count, 0);

    for (int i = 0; i < NPUBS; i++)
        hint_pub_close(w.pubs[i]);
    db_pool_destroy(pool);
    for (int i = 0; i < NSUBS; i++) {
        assert_int_equal(access(paths[i], F_OK), 0);
        hint_sub_close(w.subs[i].h);
        assert_int_not_equal(access(paths[i], F_OK), 0); /* the ipc file is removed */
    }
    event_free(w.tick);
    event_base_free(w.base);
    PQfinish(pg);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_tcp_loopback_static_list(void **state)
{
    World w = {.base = event_base_new()};
    char ep[2][64], list[160];
    for (int i = 0; i < 2; i++) {
        snprintf(ep[i], sizeof ep[i], "tcp://127.0.0.1:%d", free_port());
        open_sub(&w, i, ep[i], "router");
        assert_string_equal(hint_sub_endpoint(w.subs[i].h), ep[i]);
    }
    snprintf(list, sizeof list, " %s , %s,", ep[0], ep[1]);
    Err err;
    for (int i = 0; i < NPUBS; i++) {
        w.pubs[i] = hint_pub_open(w.base, "router", list, NULL, 0, &err);
        assert_non_null(w.pubs[i]);
        assert_int_equal(hint_pub_peers(w.pubs[i]), 2);
    }
    assert_true(run_until(&w, both_subs_from_both_pubs, true));
    for (int i = 0; i < NPUBS; i++)
        hint_pub_close(w.pubs[i]);
    for (int i = 0; i < 2; i++)
        hint_sub_close(w.subs[i].h);
    event_free(w.tick);
    event_base_free(w.base);

    /* a static endpoint nanomsg cannot use is a configuration error */
    assert_null(hint_pub_open(NULL, "router", "tcp://127.0.0.1", NULL, 0, &err));
    assert_non_null(strstr(err.msg, "could not use hint endpoint \"tcp://127.0.0.1\""));
}

/* Why every instance binds its own endpoint: a second binder is refused. */
static void test_endpoint_has_one_binder(void **state)
{
    struct event_base *base = event_base_new();
    Sub a = {0}, b = {0};
    Err err;
    a.h = hint_sub_open(base, "ipc:///tmp/pintle-it-hint-fixed-%p.ipc", "", "router", on_hint, &a,
                        &err);
    assert_non_null(a.h);
    b.h = hint_sub_open(base, "ipc:///tmp/pintle-it-hint-fixed-%p.ipc", "", "router", on_hint, &b,
                        &err);
    assert_null(b.h);
    assert_non_null(strstr(err.msg, "could not bind hint endpoint"));
    hint_sub_close(a.h);
    /* once the first is gone its endpoint is free again */
    b.h = hint_sub_open(base, "ipc:///tmp/pintle-it-hint-fixed-%p.ipc", "", "router", on_hint, &b,
                        &err);
    assert_non_null(b.h);
    hint_sub_close(b.h);

    /* a file left by a killed instance (nobody listens) is taken over */
    char path[128];
    snprintf(path, sizeof path, "/tmp/pintle-it-hint-stale-%d.ipc", (int)getpid());
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    assert_int_equal(access(path, F_OK), 0);
    a.h = hint_sub_open(base, "ipc:///tmp/pintle-it-hint-stale-%p.ipc", "", "router", on_hint, &a,
                        &err);
    assert_non_null(a.h);
    hint_sub_close(a.h);
    assert_int_not_equal(access(path, F_OK), 0);
    event_base_free(base);
}

int main(void)
{
    Err err;
    if (cfg_load(&g_cfg, NULL, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discovered_subscribers),
        cmocka_unit_test(test_tcp_loopback_static_list),
        cmocka_unit_test(test_endpoint_has_one_binder),
    };
    int rc = cmocka_run_group_tests_name("hint-topology", tests, NULL, NULL);
    cfg_deinit(&g_cfg);
    return rc;
}
