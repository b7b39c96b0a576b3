/* Tests batchrouter/warehouse.c against a real Postgres (PINTLE_DB_DSN, set
 * by make integration; the loading cases are skipped without it): the rows
 * and column types of a batch of every event type, the users upsert, a new
 * property adding a column, a type clash going to rudder_discards, a reload
 * of the same load_id inserting nothing; bad config and a refused
 * connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <pthread.h>

#include "batchrouter/warehouse.h"

#define NS "test_wh_ns"

static const WarehouseSettings SET = {5, 30000, NULL};

static PGconn *pg;
static char config[1024];

static int setup(void **state)
{
    (void)state;
    const char *dsn = getenv("PINTLE_DB_DSN");
    if (dsn == NULL || *dsn == '\0')
        return 0;
    pg = PQconnectdb(dsn);
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    PQclear(PQexec(pg, "DROP SCHEMA IF EXISTS " NS " CASCADE"));
    char *errmsg = NULL;
    PQconninfoOption *o = PQconninfoParse(dsn, &errmsg);
    assert_non_null(o);
    const char *host = "127.0.0.1", *port = "5432", *db = "", *user = "", *pw = "";
    for (PQconninfoOption *p = o; p->keyword; p++) {
        if (p->val == NULL)
            continue;
        if (strcmp(p->keyword, "host") == 0)
            host = p->val;
        else if (strcmp(p->keyword, "port") == 0)
            port = p->val;
        else if (strcmp(p->keyword, "dbname") == 0)
            db = p->val;
        else if (strcmp(p->keyword, "user") == 0)
            user = p->val;
        else if (strcmp(p->keyword, "password") == 0)
            pw = p->val;
    }
    snprintf(config, sizeof config,
             "{\"host\":\"%s\",\"port\":\"%s\",\"database\":\"%s\",\"user\":\"%s\","
             "\"password\":\"%s\",\"namespace\":\"" NS "\",\"sslMode\":\"disable\"}",
             host, port, db, user, pw);
    PQconninfoFree(o);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (pg)
        PQfinish(pg);
    return 0;
}

static char *q1(const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    char *v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

static void expect(const char *sql, const char *want)
{
    char *got = q1(sql);
    if (want == NULL ? got != NULL : (got == NULL || strcmp(got, want) != 0))
        fail_msg("%s: got %s, want %s", sql, got ? got : "NULL", want ? want : "NULL");
    free(got);
}

static void col_type(const char *table, const char *col, const char *want)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT data_type FROM information_schema.columns WHERE table_schema = '" NS
             "' AND table_name = '%s' AND column_name = '%s'",
             table, col);
    expect(sql, want);
}

static WhStatus load(Warehouse *w, const char *id, const char *const *evs, int n, WhResult *res,
                     Err *err)
{
    size_t lens[32];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(evs[i]);
    WhLoad l = {id, "ws1", "src1", "dst1", n, evs, lens};
    return warehouse_load(w, &l, res, err);
}

static const char *const batch1[] = {
    "{\"type\":\"track\",\"event\":\"Product Clicked!\",\"messageId\":\"t1\",\"userId\":\"u1\","
    "\"receivedAt\":\"2026-01-02T03:04:05.000Z\",\"timestamp\":\"2026-01-02T03:04:04.000Z\","
    "\"context\":{\"library\":{\"name\":\"js\"}},\"properties\":{\"price\":10,\"sku\":\"A\","
    "\"onSale\":true,\"when\":\"2026-01-01T00:00:00Z\",\"tags\":[\"x\",\"y\"]}}",
    "{\"type\":\"track\",\"event\":\"Product Clicked!\",\"messageId\":\"t2\",\"userId\":\"u2\","
    "\"receivedAt\":\"2026-01-02T03:04:06.000Z\",\"properties\":{\"price\":12.5,\"sku\":\"B\"}}",
    "{\"type\":\"identify\",\"messageId\":\"i1\",\"userId\":\"u1\",\"receivedAt\":"
    "\"2026-01-02T03:04:07.000Z\",\"traits\":{\"name\":\"Ann\",\"plan\":\"free\"}}",
    "{\"type\":\"page\",\"messageId\":\"p1\",\"anonymousId\":\"a1\",\"name\":\"Home\","
    "\"properties\":{\"path\":\"/\"}}",
    "{\"type\":\"screen\",\"messageId\":\"s1\",\"anonymousId\":\"a1\",\"name\":\"Main\"}",
    "{\"type\":\"group\",\"messageId\":\"g1\",\"userId\":\"u1\",\"groupId\":\"G\","
    "\"traits\":{\"size\":5}}",
    "{\"type\":\"alias\",\"messageId\":\"al1\",\"userId\":\"u1\",\"previousId\":\"a1\"}",
};

static const char *const batch2[] = {
    "{\"type\":\"track\",\"event\":\"Product Clicked!\",\"messageId\":\"t3\",\"userId\":\"u1\","
    "\"properties\":{\"price\":\"not a number\",\"sku\":\"C\",\"color\":\"red\"}}",
    "{\"type\":\"identify\",\"messageId\":\"i2\",\"userId\":\"u1\",\"traits\":{\"plan\":\"pro\"}}",
    "{\"type\":\"identify\",\"messageId\":\"i3\",\"userId\":\"u3\",\"traits\":{\"plan\":\"x\"}}",
    "{\"type\":\"identify\",\"messageId\":\"i4\",\"userId\":\"u3\",\"traits\":{\"plan\":\"y\"}}",
};

/* No namespace in the config: the source's name made safe, as
 * RudderStack's warehouse names it ("My Shop 2" -> my_shop_2); without a
 * name either, "rudder". */
static void test_default_namespace(void **state)
{
    (void)state;
    if (pg == NULL)
        skip();
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s", config);
    char *ns = strstr(cfg, "\"namespace\":\"" NS "\",");
    assert_non_null(ns);
    memmove(ns, ns + strlen("\"namespace\":\"" NS "\","), strlen(ns + strlen("\"namespace\":\"" NS "\",")) + 1);
    PQclear(PQexec(pg, "DROP SCHEMA IF EXISTS my_shop_2 CASCADE"));
    WarehouseSettings set = SET;
    set.default_namespace = "My Shop 2";
    Err err = {0};
    Warehouse *w = warehouse_create(cfg, &set, &err);
    assert_non_null(w);
    WhResult res;
    WhStatus st = load(w, "N1", batch1, 1, &res, &err);
    if (st != WH_OK)
        fail_msg("load N1: %d %s", st, err.msg);
    expect("SELECT count(*) FROM my_shop_2.pintle_loads WHERE load_id = 'N1'", "1");
    warehouse_destroy(w);
    PQclear(PQexec(pg, "DROP SCHEMA IF EXISTS my_shop_2 CASCADE"));
}

static void test_load(void **state)
{
    (void)state;
    if (pg == NULL)
        skip();
    Err err = {0};
    Warehouse *w = warehouse_create(config, &SET, &err);
    assert_non_null(w);
    WhResult res;
    WhStatus st = load(w, "L1", batch1, 7, &res, &err);
    if (st != WH_OK)
        fail_msg("load L1: %d %s", st, err.msg);
    assert_false(res.already_loaded);
    /* tracks 2 + event table 2 + identifies 1 + users 1 + page, screen, group, alias */
    assert_int_equal(res.rows, 10);
    expect("SELECT count(*) FROM " NS ".tracks", "2");
    expect("SELECT count(*) FROM " NS ".product_clicked", "2");
    expect("SELECT string_agg(event || '/' || event_text, ',' ORDER BY id) FROM " NS ".tracks",
           "product_clicked/Product Clicked!,product_clicked/Product Clicked!");
    expect("SELECT context_library_name FROM " NS ".tracks WHERE id = 't1'", "js");
    expect("SELECT context_source_id FROM " NS ".product_clicked WHERE id = 't1'", "src1");
    expect("SELECT price::text FROM " NS ".product_clicked WHERE id = 't2'", "12");
    expect("SELECT tags FROM " NS ".product_clicked WHERE id = 't1'", "[\"x\",\"y\"]");
    col_type("product_clicked", "price", "bigint");
    col_type("product_clicked", "on_sale", "boolean");
    col_type("product_clicked", "_when", "timestamp with time zone");
    col_type("product_clicked", "sku", "text");
    col_type("tracks", "received_at", "timestamp with time zone");
    col_type("tracks", "uuid_ts", "timestamp with time zone");
    col_type("groups", "size", "bigint");
    expect("SELECT name || ',' || plan FROM " NS ".users WHERE id = 'u1'", "Ann,free");
    expect("SELECT name FROM " NS ".identifies WHERE id = 'i1'", "Ann");
    expect("SELECT path FROM " NS ".pages WHERE id = 'p1'", "/");
    expect("SELECT name FROM " NS ".screens WHERE id = 's1'", "Main");
    expect("SELECT group_id FROM " NS ".groups WHERE id = 'g1'", "G");
    expect("SELECT previous_id FROM " NS ".aliases WHERE id = 'al1'", "a1");
    expect("SELECT count(*) FROM " NS ".pintle_loads WHERE load_id = 'L1'", "1");

    /* a new property, a clash, users upserted (latest traits win) */
    st = load(w, "L2", batch2, 4, &res, &err);
    if (st != WH_OK)
        fail_msg("load L2: %d %s", st, err.msg);
    assert_true(res.columns_added >= 1);
    assert_int_equal(res.discards, 1);
    col_type("product_clicked", "color", "text");
    expect("SELECT color FROM " NS ".product_clicked WHERE id = 't3'", "red");
    expect("SELECT price FROM " NS ".product_clicked WHERE id = 't3'", NULL);
    expect(
        "SELECT table_name || '|' || column_name || '|' || column_value || '|' || row_id FROM " NS
        ".rudder_discards",
        "product_clicked|price|not a number|t3");
    expect("SELECT count(*) FROM " NS ".users", "2");
    expect("SELECT name || ',' || plan FROM " NS ".users WHERE id = 'u1'", "Ann,pro");
    expect("SELECT plan FROM " NS ".users WHERE id = 'u3'", "y");
    expect("SELECT count(*) FROM " NS ".identifies", "4");

    /* the same load again inserts nothing */
    st = load(w, "L1", batch1, 7, &res, &err);
    assert_int_equal(st, WH_OK);
    assert_true(res.already_loaded);
    assert_int_equal(res.rows, 0);
    expect("SELECT count(*) FROM " NS ".tracks", "3");
    expect("SELECT count(*) FROM " NS ".product_clicked", "3");
    expect("SELECT count(*) FROM " NS ".pages", "1");
    expect("SELECT count(*) FROM " NS ".rudder_discards", "1");
    warehouse_destroy(w);
}

/* Two destinations loading into one namespace at once, each load adding
 * tables and columns: no deadlock, every row once. */
typedef struct Loader {
    int who;
    WhStatus st[4];
    char msg[4][256];
} Loader;

static void *loader(void *arg)
{
    Loader *l = arg;
    Err err = {0};
    Warehouse *w = warehouse_create(config, &SET, &err);
    for (int b = 0; b < 4; b++) {
        char evs[20][300];
        const char *ptr[20];
        for (int i = 0; i < 20; i++) {
            snprintf(evs[i], sizeof evs[i],
                     "{\"type\":\"%s\",\"event\":\"Shared %d\",\"messageId\":\"c%d-%d-%d\","
                     "\"userId\":\"cu%d\",\"traits\":{\"t%d_%d\":1},"
                     "\"properties\":{\"p%d_%d\":%d}}",
                     i % 2 ? "identify" : "track", b % 2, l->who, b, i, i % 3, l->who, b, l->who, b,
                     i);
            ptr[i] = evs[i];
        }
        char id[32];
        snprintf(id, sizeof id, "C%d-%d", l->who, b);
        WhResult res;
        l->st[b] = load(w, id, ptr, 20, &res, &err);
        snprintf(l->msg[b], sizeof l->msg[b], "%s", err.msg);
    }
    warehouse_destroy(w);
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    if (pg == NULL)
        skip();
    Loader a = {.who = 1}, b = {.who = 2};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, loader, &a);
    pthread_create(&tb, NULL, loader, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int i = 0; i < 4; i++) {
        if (a.st[i] != WH_OK || b.st[i] != WH_OK)
            fail_msg("load %d: %d %s / %d %s", i, a.st[i], a.msg[i], b.st[i], b.msg[i]);
    }
    expect("SELECT count(*) FROM " NS ".tracks WHERE id LIKE 'c%'", "80");
    expect("SELECT count(DISTINCT id) FROM " NS ".identifies WHERE id LIKE 'c%'", "80");
    expect("SELECT count(*) FROM " NS ".shared_0", "40");
    expect("SELECT count(*) FROM " NS ".shared_1", "40");
    expect("SELECT count(*) FROM " NS ".users WHERE id LIKE 'cu%'", "3");
    /* lodash splits letters and digits: p2_3 -> p_2_3 */
    col_type("shared_1", "p_2_3", "bigint");
    col_type("users", "t_1_2", "bigint");
}

/* A failure that is the batch's own (here a NOT NULL column someone added
 * to an event table) aborts it, and nothing of it is committed. */
static void test_abort(void **state)
{
    (void)state;
    if (pg == NULL)
        skip();
    PQclear(PQexec(pg, "CREATE TABLE " NS ".strict_event (id text, must text NOT NULL)"));
    Err err = {0};
    Warehouse *w = warehouse_create(config, &SET, &err);
    const char *ev[] = {"{\"type\":\"track\",\"event\":\"Strict Event\",\"messageId\":\"x1\"}"};
    WhResult res;
    assert_int_equal(load(w, "LX", ev, 1, &res, &err), WH_ABORT);
    assert_non_null(strstr(err.msg, "must"));
    expect("SELECT count(*) FROM " NS ".tracks WHERE id = 'x1'", "0");
    expect("SELECT count(*) FROM " NS ".pintle_loads WHERE load_id = 'LX'", "0");
    /* the connection is usable for the next load */
    const char *ok[] = {"{\"type\":\"page\",\"messageId\":\"x2\"}"};
    assert_int_equal(load(w, "LY", ok, 1, &res, &err), WH_OK);
    expect("SELECT count(*) FROM " NS ".pages WHERE id = 'x2'", "1");
    /* a connection the server dropped while idle is replaced at once */
    expect("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
           " WHERE application_name = 'pintle-batchrouter-warehouse'",
           "1");
    const char *ok2[] = {"{\"type\":\"page\",\"messageId\":\"x3\"}"};
    WhStatus st = load(w, "LZ", ok2, 1, &res, &err);
    if (st != WH_OK)
        fail_msg("load after a dropped connection: %d %s", st, err.msg);
    expect("SELECT count(*) FROM " NS ".pages WHERE id = 'x3'", "1");
    warehouse_destroy(w);
}

static void test_bad_config(void **state)
{
    (void)state;
    Err err = {0};
    assert_null(warehouse_create("{\"database\":\"x\"}", &SET, &err));
    assert_non_null(strstr(err.msg, "no host"));
    assert_null(warehouse_create("{\"host\":\"x\"}", &SET, &err));
    assert_non_null(strstr(err.msg, "no database"));
    assert_null(warehouse_create("not json", &SET, &err));
}

static void test_refused(void **state)
{
    (void)state;
    Err err = {0};
    Warehouse *w = warehouse_create(
        "{\"host\":\"127.0.0.1\",\"port\":\"1\",\"database\":\"x\",\"user\":\"u\"}", &SET, &err);
    assert_non_null(w);
    WhResult res;
    const char *ev[] = {"{\"type\":\"track\",\"event\":\"e\"}"};
    assert_int_equal(load(w, "L9", ev, 1, &res, &err), WH_RETRY);
    assert_non_null(strstr(err.msg, "could not connect"));
    warehouse_destroy(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load),    cmocka_unit_test(test_default_namespace),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_abort),   cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
