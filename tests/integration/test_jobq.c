/* Integration tests of the jobs queue on a real, private Postgres
 * (tests/integration/run.sh starts it and sets PINTLE_DB_DSN): migrations,
 * partition-locked writers and cursor readers (no skipped rows, also when a
 * later transaction commits first), concurrent async writers (common/db.c)
 * with a reader, dataset rotation and drop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/jobq.h"
#include "common/migrate.h"

#define P 8

static Config g_cfg;

static PGconn *connect_schema(const char *schema)
{
    free(g_cfg.db.schema);
    g_cfg.db.schema = strdup(schema);
    Err err;
    PGconn *pg = db_connect_blocking(&g_cfg.db, "it", &err);
    if (pg == NULL)
        fail_msg("%s", err.msg);
    return pg;
}

static void exec_ok(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
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

static PGconn *fresh_schema(const char *schema)
{
    PGconn *pg = connect_schema(schema);
    char sql[256];
    snprintf(sql, sizeof sql, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s CASCADE",
             schema);
    exec_ok(pg, sql);
    Err err;
    int n = migrate_run(pg, schema, P, &err);
    if (n < 0)
        fail_msg("%s", err.msg);
    assert_true(n >= 1);
    return pg;
}

static char *newest(PGconn *pg)
{
    const char *params[1] = {"gw"};
    PGresult *r = PQexecParams(pg, JOBQ_SQL_NEWEST_DATASET, 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char *t = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return t;
}

static void rows_for(Buf *copy, int partition, int n, const char *tag)
{
    for (int i = 0; i < n; i++) {
        char payload[128];
        snprintf(payload, sizeof payload, "{\"tag\":\"%s-%d\"}", tag, i);
        JobRow r = {partition, "ws", "src", "", "user", payload, strlen(payload)};
        jobq_copy_row(copy, &r);
    }
}

/* Sends BEGIN, the partition lock and COPY; does not wait for the lock. */
static void write_send(PGconn *pg, int partition)
{
    char *table = newest(pg);
    Buf sql;
    buf_init(&sql);
    jobq_format_write(&sql, JOBQ_GW, table, &partition, 1, true, false);
    assert_int_equal(PQsendQuery(pg, sql.data), 1);
    buf_deinit(&sql);
    free(table);
}

/* Waits for COPY to start (blocking on the lock if held), sends the rows. */
static void write_finish(PGconn *pg, int partition, int n, const char *tag, bool commit)
{
    PGresult *r;
    bool copied = false;
    while ((r = PQgetResult(pg)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN) {
            Buf copy;
            buf_init(&copy);
            rows_for(&copy, partition, n, tag);
            assert_int_equal(PQputCopyData(pg, copy.data, (int)copy.len), 1);
            assert_int_equal(PQputCopyEnd(pg, NULL), 1);
            buf_deinit(&copy);
            copied = true;
        } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            fail_msg("write failed: %s", PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    assert_true(copied);
    if (commit)
        exec_ok(pg, "COMMIT");
}

static void write_rows(PGconn *pg, int partition, int n, const char *tag, bool commit)
{
    write_send(pg, partition);
    write_finish(pg, partition, n, tag, commit);
}

typedef struct Reader {
    PGconn *pg;
    int64_t cursor[P];
    int64_t last_seen[P];
    char **tags;
    int ntags, cap;
} Reader;

static void reader_init(Reader *rd, PGconn *pg)
{
    memset(rd, 0, sizeof *rd);
    rd->pg = pg;
}

static void reader_deinit(Reader *rd)
{
    for (int i = 0; i < rd->ntags; i++)
        free(rd->tags[i]);
    free(rd->tags);
}

/* One claim over every partition; advances the cursors in a transaction with
 * the compare-and-set update. Returns rows read. */
static int reader_claim(Reader *rd)
{
    int parts[P];
    for (int i = 0; i < P; i++)
        parts[i] = i;
    Buf sql;
    buf_init(&sql);
    jobq_format_claim(&sql, JOBQ_GW, parts, rd->cursor, P, NULL, 100000);
    PGresult *r = PQexec(rd->pg, sql.data);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("claim: %s", PQresultErrorMessage(r));
    int n = PQntuples(r);
    int64_t next[P];
    memcpy(next, rd->cursor, sizeof next);
    for (int i = 0; i < n; i++) {
        int64_t id = atoll(PQgetvalue(r, i, 0));
        int p = atoi(PQgetvalue(r, i, 1));
        assert_true(id > rd->last_seen[p]); /* increasing within a partition */
        rd->last_seen[p] = id;
        next[p] = id;
        if (rd->ntags == rd->cap) {
            rd->cap = rd->cap ? rd->cap * 2 : 64;
            rd->tags = realloc(rd->tags, sizeof(char *) * (size_t)rd->cap);
        }
        rd->tags[rd->ntags++] = strdup(PQgetvalue(r, i, 7));
    }
    PQclear(r);
    buf_reset(&sql);
    buf_puts(&sql, "BEGIN;");
    jobq_format_advance(&sql, "processor", parts, rd->cursor, next, P);
    r = PQexec(rd->pg, sql.data);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) /* nobody else moved them */
        fail_msg("advance: %s", PQresultErrorMessage(r));
    PQclear(r);
    exec_ok(rd->pg, "COMMIT");
    memcpy(rd->cursor, next, sizeof next);
    buf_deinit(&sql);
    return n;
}

static bool reader_has(Reader *rd, const char *tag)
{
    for (int i = 0; i < rd->ntags; i++)
        if (strstr(rd->tags[i], tag) != NULL)
            return true;
    return false;
}

static void test_migrations(void **state)
{
    PGconn *pg = fresh_schema("it_migrate");
    Err err;
    int latest = 0;
    for (const Migration *m = migrations; m->name; m++)
        latest = m->version;
    assert_int_equal(migrate_current_version(pg, "it_migrate", &err), latest);
    assert_int_equal(migrate_run(pg, "it_migrate", P, &err), 0); /* re-run: nothing to do */
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_migrate.cursors"), 3 * P);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_migrate.datasets"), 3);
    assert_int_equal(scalar(pg, "SELECT value::int FROM it_migrate.meta WHERE key = 'partitions'"),
                     P);
    PQfinish(pg);
}

/* A transaction that took a lower id commits after one with a higher id on
 * another partition: per-partition cursors must not skip its row. */
static void test_late_commit_other_partition(void **state)
{
    PGconn *admin = fresh_schema("it_late");
    PGconn *a = connect_schema("it_late");
    PGconn *b = connect_schema("it_late");
    Reader rd;
    reader_init(&rd, admin);
    write_rows(a, 1, 1, "A", false); /* id n, still open */
    write_rows(b, 2, 1, "B", true);  /* id n+1, committed */
    assert_int_equal(reader_claim(&rd), 1);
    assert_true(reader_has(&rd, "B-0"));
    exec_ok(a, "COMMIT");
    assert_int_equal(reader_claim(&rd), 1);
    assert_true(reader_has(&rd, "A-0"));
    assert_true(rd.cursor[1] < rd.cursor[2]); /* A really had the lower id */
    assert_int_equal(reader_claim(&rd), 0);
    reader_deinit(&rd);
    PQfinish(a);
    PQfinish(b);
    PQfinish(admin);
}

/* Two writers on one partition: the second waits for the first's lock, so
 * ids commit in order and the reader sees A's rows before B's. */
static void test_same_partition_waits(void **state)
{
    PGconn *admin = fresh_schema("it_same");
    PGconn *a = connect_schema("it_same");
    PGconn *b = connect_schema("it_same");
    Reader rd;
    reader_init(&rd, admin);
    write_rows(a, 3, 2, "A", false);
    write_send(b, 3); /* blocks server-side on A's partition lock */
    usleep(200 * 1000);
    assert_int_equal(scalar(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                   " AND NOT granted"),
                     1);
    assert_int_equal(reader_claim(&rd), 0);
    exec_ok(a, "COMMIT");
    write_finish(b, 3, 2, "B", true);
    assert_int_equal(reader_claim(&rd), 4);
    assert_non_null(strstr(rd.tags[0], "A-0"));
    assert_non_null(strstr(rd.tags[1], "A-1"));
    assert_non_null(strstr(rd.tags[2], "B-0"));
    assert_non_null(strstr(rd.tags[3], "B-1"));
    reader_deinit(&rd);
    PQfinish(a);
    PQfinish(b);
    PQfinish(admin);
}

/* Four async writers (common/db.c on a libevent loop) append multi-partition
 * transactions while a reader claims between them: every row is read
 * exactly once and in order per partition. */
#define WRITERS 4
#define TXNS 40
#define ROWS 25

typedef struct Load {
    struct event_base *base;
    DbPool *pool;
    char *table;
    int started, done, failed;
    Reader *rd;
    struct event *tick;
} Load;

typedef struct Txn {
    Load *l;
    Buf sql, copy;
    DbCopy dc;
} Txn;

static void start_txn(Load *l, DbConn *c);

static void on_txn(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    Txn *t = arg;
    Load *l = t->l;
    if (err != NULL) {
        fprintf(stderr, "txn failed: %s\n", err->msg);
        l->failed++;
    }
    l->done++;
    buf_deinit(&t->sql);
    buf_deinit(&t->copy);
    free(t);
    if (l->started < WRITERS * TXNS)
        start_txn(l, c); /* keep the connection busy */
}

static void start_txn(Load *l, DbConn *c)
{
    int k = l->started++;
    Txn *t = calloc(1, sizeof *t);
    t->l = l;
    int parts[3] = {k % P, (k * 7 + 3) % P, (k * 5 + 1) % P};
    int n = jobq_sort_partitions(parts, 3);
    jobq_format_write(&t->sql, JOBQ_GW, l->table, parts, n, true, false);
    buf_puts(&t->sql, "COMMIT");
    for (int i = 0; i < ROWS; i++) {
        char payload[64];
        snprintf(payload, sizeof payload, "{\"tag\":\"t%d-%d\"}", k, i);
        JobRow r = {parts[i % n], "ws", "src", "", "user", payload, strlen(payload)};
        jobq_copy_row(&t->copy, &r);
    }
    t->dc.data = t->copy.data;
    t->dc.len = t->copy.len;
    assert_int_equal(db_exec(c, t->sql.data, -1, NULL, &t->dc, 1, on_txn, t), 0);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    Load *l = arg;
    for (DbConn *c; l->started < WRITERS * TXNS && (c = db_pool_acquire(l->pool)) != NULL;)
        start_txn(l, c);
    reader_claim(l->rd);
    if (l->done == WRITERS * TXNS)
        event_base_loopbreak(l->base);
}

static void test_concurrent_async_writers(void **state)
{
    PGconn *admin = fresh_schema("it_conc");
    Reader rd;
    reader_init(&rd, connect_schema("it_conc"));
    Load l;
    memset(&l, 0, sizeof l);
    l.rd = &rd;
    l.table = newest(admin);
    l.base = event_base_new();
    l.pool = db_pool_create(l.base, &g_cfg.db, "it-writer", WRITERS);
    l.tick = event_new(l.base, -1, EV_PERSIST, on_tick, &l);
    struct timeval tv = {0, 5000};
    event_add(l.tick, &tv);
    event_base_dispatch(l.base);
    while (reader_claim(&rd) > 0)
        ;
    assert_int_equal(l.failed, 0);
    assert_int_equal(rd.ntags, WRITERS * TXNS * ROWS);
    /* exactly once: the tags are unique */
    assert_int_equal(scalar(admin, "SELECT count(DISTINCT payload) FROM it_conc.gw_jobs"),
                     WRITERS * TXNS * ROWS);
    event_free(l.tick);
    db_pool_destroy(l.pool);
    event_base_free(l.base);
    free(l.table);
    PQfinish(rd.pg);
    reader_deinit(&rd);
    PQfinish(admin);
}

/* A second consumer that advanced a cursor first makes the slower one's
 * commit fail: nothing it wrote in that transaction is kept. */
static void test_cursor_conflict(void **state)
{
    PGconn *pg = fresh_schema("it_cas");
    write_rows(pg, 4, 3, "x", true);
    int parts[1] = {4};
    int64_t old_ids[1] = {0}, new_ids[1] = {5};
    Buf sql;
    buf_init(&sql);
    jobq_format_advance(&sql, "processor", parts, old_ids, new_ids, 1);
    exec_ok(pg, sql.data); /* the first consumer moves 0 -> 5 */
    buf_reset(&sql);
    buf_puts(&sql, "BEGIN; INSERT INTO it_cas.meta VALUES ('side-effect', 'x');");
    int64_t new2[1] = {7};
    jobq_format_advance(&sql, "processor", parts, old_ids, new2, 1);
    PGresult *r = PQexec(pg, sql.data);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_non_null(strstr(PQresultErrorMessage(r), "moved by another consumer"));
    PQclear(r);
    exec_ok(pg, "ROLLBACK");
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_cas.meta WHERE key = 'side-effect'"), 0);
    assert_int_equal(scalar(pg, "SELECT last_job_id FROM it_cas.cursors WHERE stage = 'processor'"
                                " AND partition = 4"),
                     5);
    buf_deinit(&sql);
    PQfinish(pg);
}

static void test_rotation_and_drop(void **state)
{
    PGconn *pg = fresh_schema("it_rot");
    Reader rd;
    reader_init(&rd, connect_schema("it_rot"));
    write_rows(pg, 0, 10, "old", true);
    /* over the size threshold: rotates, and cannot drop the unread dataset */
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1, 3600)"), 0);
    char *t = newest(pg);
    assert_string_equal(t, "gw_jobs_2");
    free(t);
    write_rows(pg, 0, 5, "new", true);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_rot.gw_jobs_2"), 5);
    /* still unread: nothing dropped */
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 3600)"), 0);
    assert_int_equal(reader_claim(&rd), 15); /* reads across both datasets */
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 3600)"), 1);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'it_rot'"
                                " AND tablename = 'gw_jobs_1'"),
                     0);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_rot.datasets WHERE queue = 'gw'"), 1);
    /* the newest dataset is never dropped, even when fully read */
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 3600)"), 0);
    assert_int_equal(scalar(pg, "SELECT count(*) FROM it_rot.gw_jobs"), 5);
    /* age: a non-empty newest dataset older than max_age rotates */
    usleep(1100 * 1000);
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 1)"), 0);
    t = newest(pg);
    assert_string_equal(t, "gw_jobs_3");
    free(t);
    /* the next run drops the fully read dataset it rotated away from */
    assert_int_equal(scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 3600)"), 1);
    /* an empty newest dataset does not rotate however old */
    usleep(1100 * 1000);
    scalar(pg, "SELECT it_rot.maintain_queue('gw', 1000000000, 1)");
    t = newest(pg);
    assert_string_equal(t, "gw_jobs_3");
    free(t);
    reader_deinit(&rd);
    PQfinish(rd.pg);
    PQfinish(pg);
}

int main(void)
{
    Err err;
    if (cfg_load(&g_cfg, NULL, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations),
        cmocka_unit_test(test_late_commit_other_partition),
        cmocka_unit_test(test_same_partition_waits),
        cmocka_unit_test(test_concurrent_async_writers),
        cmocka_unit_test(test_cursor_conflict),
        cmocka_unit_test(test_rotation_and_drop),
    };
    int rc = cmocka_run_group_tests_name("jobq-postgres", tests, NULL, NULL);
    cfg_deinit(&g_cfg);
    return rc;
}
