/* Tests router/store.c: array literals for parameters, the claim and the
 * status flush as formatted from an OrderFlush. With PINTLE_DB_DSN set
 * (tests/integration/run.sh starts a Postgres), the flush and the claim also
 * run against a migrated schema of their own; without it those are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/migrate.h"
#include "router/store.h"

static void test_text_array_escapes_quotes_and_backslashes(void **state)
{
    Buf b;
    buf_init(&b);
    const char *v[] = {"plain", "a\"b", "c\\d", "", "x,y {z}"};
    store_put_text_array(&b, v, 5);
    assert_string_equal(b.data, "{\"plain\",\"a\\\"b\",\"c\\\\d\",\"\",\"x,y {z}\"}");
    buf_reset(&b);
    store_put_text_array(&b, v, 0);
    assert_string_equal(b.data, "{}");
    buf_reset(&b);
    int64_t ids[] = {1, -2, 9007199254740993};
    store_put_int64_array(&b, ids, 3);
    assert_string_equal(b.data, "{1,-2,9007199254740993}");
    buf_deinit(&b);
}

static void test_claim_probes_rows_only_when_there_are_any(void **state)
{
    Buf b;
    buf_init(&b);
    int parts[] = {1, 4, 6};
    int64_t cur[] = {5, 0, 7};
    store_format_claim(&b, parts, cur, 3, 40);
    assert_non_null(strstr(b.data, "unnest('{1,4,6}'::int[], '{5,0,7}'::bigint[])"));
    /* the emptiness test asks about these partitions only */
    assert_non_null(strstr(b.data, "WHERE NOT parked AND partition = ANY ('{1,4,6}'::int[])"));
    assert_non_null(strstr(b.data, "CASE WHEN r.any THEN EXISTS"));
    assert_non_null(strstr(b.data, "x.job_id < j.job_id"));
    assert_non_null(strstr(b.data, "y.job_id >= j.job_id"));
    assert_non_null(strstr(b.data, "LIMIT 40"));
    buf_deinit(&b);
}

static void test_flush_writes_rows_deletes_and_dead_letters(void **state)
{
    OrderJob *head = order_job_create(10, 3, "ws", "src", "d", "u\tx", "{\"a\":1}", 7);
    head->row = true;
    head->attempts = 2;
    head->first_failed_ms = 1000;
    head->next_retry_ms = 61000;
    head->last_status = 500;
    head->last_error = strdup("destination answered 500");
    OrderJob *parked = order_job_create(11, 3, "ws", "src", "d", "u\tx", "{}", 2);
    parked->row = true;
    parked->parked = true;
    OrderJob *done = order_job_create(9, 3, "ws", "src", "d", "v", "{}", 2);
    done->row = true;
    done->fate = ORDER_DONE;
    OrderJob *dead = order_job_create(8, 2, "ws", "src", "d", "w", "{}", 2);
    dead->fate = ORDER_DEAD;
    dead->last_status = 400;
    dead->last_error = strdup("destination answered 400");
    OrderJob *jobs[] = {head, parked, done, dead};
    int parts[] = {3};
    int64_t olds[] = {7}, news[] = {11};
    int touched[] = {2, 3};
    OrderFlush f = {.jobs = jobs,
                    .njobs = 4,
                    .parts = parts,
                    .old_ids = olds,
                    .new_ids = news,
                    .nparts = 1,
                    .touched = touched,
                    .ntouched = 2,
                    .gen = 1};
    StoreFlush s;
    store_flush_init(&s);
    store_format_flush(&s, &f, "SELECT fence();");
    /* the fence comes first, before anything is written */
    assert_non_null(strstr(s.sql.data, "BEGIN; SET LOCAL synchronous_commit = off;SELECT fence();"
                                       "CREATE TEMP TABLE"));
    assert_int_equal(s.ncopies, 2);
    assert_string_equal(s.retry_rows.data,
                        "10\t3\tws\tsrc\td\tu\\tx\t{\"a\":1}\tf\t2\t1970-01-01 00:00:01.000+00\t"
                        "1970-01-01 00:01:01.000+00\t500\tdestination answered 500\n"
                        "11\t3\tws\tsrc\td\tu\\tx\t{}\tt\t0\t\\N\t\\N\t\\N\t\\N\n");
    /* only rows are deleted (the dead letter had none), and promoted after */
    assert_non_null(
        strstr(s.sql.data, "DELETE FROM rt_retries WHERE job_id = ANY('{9}'::bigint[])"));
    assert_non_null(strstr(s.sql.data, "rt_retries_touched"));
    assert_non_null(
        strstr(s.dead_rows.data, "rt\t8\trouter\t2\tws\tsrc\td\tw\t400\tdestination answered 400"));
    assert_non_null(strstr(s.sql.data, "check_cursors"));
    assert_true(strstr(s.sql.data, "INSERT INTO rt_retries") < strstr(s.sql.data, "DELETE FROM"));
    store_flush_deinit(&s);
    for (int i = 0; i < 4; i++)
        order_job_free(jobs[i]);
}

/* ---- against Postgres ---- */

static PGconn *db_open(void)
{
    const char *dsn = getenv("PINTLE_DB_DSN");
    if (dsn == NULL || *dsn == '\0')
        return NULL;
    PGconn *pg = PQconnectdb(dsn);
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    PGresult *r = PQexec(pg, "DROP SCHEMA IF EXISTS test_router_store CASCADE");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    Err err = {0};
    assert_true(migrate_run(pg, "test_router_store", 4, &err) > 0);
    r = PQexec(pg, "SET search_path TO test_router_store, public");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    return pg;
}

/* Runs a multi-statement text feeding its COPYs in order; fails on error. */
static void db_run(PGconn *pg, const char *sql, const DbCopy *copies, int ncopies)
{
    assert_int_equal(PQsendQuery(pg, sql), 1);
    int c = 0;
    PGresult *r;
    while ((r = PQgetResult(pg)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN) {
            assert_true(c < ncopies);
            assert_int_equal(PQputCopyData(pg, copies[c].data, (int)copies[c].len), 1);
            assert_int_equal(PQputCopyEnd(pg, NULL), 1);
            c++;
        } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            fail_msg("%s", PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    assert_int_equal(c, ncopies);
}

static void flush_jobs(PGconn *pg, OrderJob **jobs, int n)
{
    OrderFlush f = {.jobs = jobs, .njobs = n, .gen = 1};
    StoreFlush s;
    store_flush_init(&s);
    store_format_flush(&s, &f, "");
    db_run(pg, s.sql.data, s.copies, s.ncopies);
    store_flush_deinit(&s);
}

static OrderJob *db_job(int64_t id, const char *user, bool parked, OrderFate fate)
{
    OrderJob *j = order_job_create(id, 0, "ws", "src", "d", user, "{}", 2);
    j->row = true;
    j->parked = parked;
    j->fate = fate;
    if (!parked && fate == ORDER_PENDING) {
        j->attempts = 1;
        j->first_failed_ms = 1000;
        j->next_retry_ms = 2000;
    }
    return j;
}

/* Users whose rows break the shape: not exactly one unparked row, the
 * smallest, with a retry time. */
static int bad_users(PGconn *pg)
{
    PGresult *r = PQexec(pg, "SELECT destination_id, user_id FROM rt_retries GROUP BY 1, 2"
                             " HAVING count(*) FILTER (WHERE NOT parked) <> 1"
                             " OR min(job_id) <> min(job_id) FILTER (WHERE NOT parked)"
                             " OR bool_or(NOT parked AND next_retry_at IS NULL)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    int n = PQntuples(r);
    for (int i = 0; i < n; i++)
        print_message("bad user %s/%s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
    return n;
}

static void test_flush_keeps_one_head_per_user(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    /* a parked row with no row before it (the state machine only knows
     * rt_retries MAY hold rows of the user): it becomes the head */
    OrderJob *a[] = {db_job(12, "u", true, ORDER_PENDING)};
    flush_jobs(pg, a, 1);
    assert_int_equal(bad_users(pg), 0);
    /* a head and its parked rows; then the head is deleted while another
     * parked row is added in the same flush */
    OrderJob *b[] = {db_job(20, "v", false, ORDER_PENDING), db_job(21, "v", true, ORDER_PENDING),
                     db_job(22, "v", true, ORDER_PENDING)};
    flush_jobs(pg, b, 3);
    assert_int_equal(bad_users(pg), 0);
    OrderJob *c[] = {db_job(20, "v", false, ORDER_DONE), db_job(23, "v", true, ORDER_PENDING),
                     db_job(12, "u", false, ORDER_DEAD), db_job(13, "u", true, ORDER_PENDING)};
    flush_jobs(pg, c, 4);
    assert_int_equal(bad_users(pg), 0);
    PGresult *r = PQexec(pg, "SELECT string_agg(job_id || ':' || parked, ',' ORDER BY job_id)"
                             " FROM rt_retries");
    assert_string_equal(PQgetvalue(r, 0, 0), "13:false,21:false,22:true,23:true");
    PQclear(r);
    for (int i = 0; i < 1; i++)
        order_job_free(a[i]);
    for (int i = 0; i < 3; i++)
        order_job_free(b[i]);
    for (int i = 0; i < 4; i++)
        order_job_free(c[i]);
    PQfinish(pg);
}

/* The claim's probes: rows before the job park it; its own row, or only
 * later rows (it was resolved in an earlier term), make it cursor-only. */
static void test_claim_sees_rows_before_and_after(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    OrderJob *rows[] = {db_job(11, "u", false, ORDER_PENDING),
                        db_job(13, "u", true, ORDER_PENDING)};
    flush_jobs(pg, rows, 2);
    PGresult *r =
        PQexec(pg, "INSERT INTO rt_jobs (job_id, partition, workspace_id, source_id,"
                   " destination_id, user_id, payload) VALUES"
                   " (10, 0, 'ws', 's', 'd', 'u', '{}'), (11, 0, 'ws', 's', 'd', 'u', '{}'),"
                   " (12, 0, 'ws', 's', 'd', 'u', '{}'), (14, 0, 'ws', 's', 'd', 'u', '{}'),"
                   " (15, 0, 'ws', 's', 'd', 'other', '{}')");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    Buf q;
    buf_init(&q);
    int part[] = {0};
    int64_t cur[] = {0};
    store_format_claim(&q, part, cur, 1, 100);
    r = PQexec(pg, q.data);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 5);
    OrderRows want[] = {ORDER_ROWS_OWN, ORDER_ROWS_OWN, ORDER_ROWS_OWN, ORDER_ROWS_USER,
                        ORDER_ROWS_NONE};
    for (int i = 0; i < 5; i++) {
        OrderRows got;
        OrderJob *j = store_claimed_job(r, i, &got);
        assert_int_equal(got, want[i]);
        order_job_free(j);
    }
    PQclear(r);
    buf_deinit(&q);
    for (int i = 0; i < 2; i++)
        order_job_free(rows[i]);
    PQfinish(pg);
}

static PGresult *exec_params(PGconn *pg, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s", PQresultErrorMessage(r));
    return r;
}

static void exec_ok(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s", PQresultErrorMessage(r));
    PQclear(r);
}

static PGresult *due_scan(PGconn *pg, const char *parts, const char *at, const char *after,
                          const char *skip, const char *limit, const char *per)
{
    const char *params[] = {at, after, skip, limit, parts, per};
    return exec_params(pg, STORE_SQL_DUE, 6, params);
}

/* The due scan reads only the partitions it is given, in (next_retry_at,
 * job_id) order across them, a page at a time, and never parked rows. */
static void test_due_scan_pages_over_given_partitions(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    /* heads: job ids in partitions 0..3, due 1 to 8 s after the epoch; 7 is
     * parked, 8 due in an hour */
    exec_ok(pg, "INSERT INTO rt_retries (job_id, partition, workspace_id, source_id,"
                " destination_id, user_id, payload, parked, attempts, next_retry_at)"
                " SELECT i, i % 4, 'ws', 's', 'd', 'u' || i, '{}', i = 7, 1,"
                " CASE WHEN i = 8 THEN now() + interval '1 hour'"
                " ELSE to_timestamp(10 - i) END FROM generate_series(1, 8) i");
    /* partitions 1 and 3: jobs 1, 3, 5, 7 (parked); due order 5, 3, 1 */
    PGresult *r = due_scan(pg, "{1,3}", "-infinity", "0", "{}", "2", "2");
    assert_int_equal(PQntuples(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 0), "5");
    assert_string_equal(PQgetvalue(r, 1, 0), "3");
    bool more;
    assert_int_equal(store_due_take(r, 2, 2, &more), 2);
    assert_true(more);
    char at[64];
    snprintf(at, sizeof at, "%s", PQgetvalue(r, 1, STORE_DUE_AT_COL));
    PQclear(r);
    r = due_scan(pg, "{1,3}", at, "3", "{}", "2", "2");
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    assert_int_equal(store_due_take(r, 2, 2, &more), 1);
    assert_false(more); /* read to the end */
    PQclear(r);
    /* partitions 0 and 2 (jobs 2, 4, 6; 8 not due), then destination d left out */
    r = due_scan(pg, "{0,2}", "-infinity", "0", "{}", "10", "10");
    assert_int_equal(PQntuples(r), 3);
    assert_string_equal(PQgetvalue(r, 0, 0), "6");
    PQclear(r);
    r = due_scan(pg, "{0,1,2,3}", "-infinity", "0", "{d}", "10", "10");
    assert_int_equal(PQntuples(r), 0);
    PQclear(r);
    PQfinish(pg);
}

/* A partition with a backlog reads its share, not the whole page, and the
 * page ends where that share ends, so paging skips none of its rows; the
 * statement reads at most partitions x share rows. */
static void test_due_scan_cuts_the_page_at_a_partition_share(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    assert_int_equal(store_due_per_partition(256, 64), STORE_DUE_MIN_PER_PARTITION);
    assert_int_equal(store_due_per_partition(256, 4), 128);
    assert_int_equal(store_due_per_partition(10, 1), 10);
    /* partition 0: 100 heads due at 1..100 s; partition 1: one at 50.5 s,
     * partition 2: one at 200 s */
    exec_ok(pg,
            "INSERT INTO rt_retries (job_id, partition, workspace_id, source_id,"
            " destination_id, user_id, payload, parked, attempts, next_retry_at)"
            " SELECT i, 0, 'ws', 's', 'd', 'u' || i, '{}', false, 1, to_timestamp(i)"
            " FROM generate_series(1, 100) i UNION ALL"
            " SELECT 1000, 1, 'ws', 's', 'd', 'x', '{}', false, 1, to_timestamp(50.5)"
            " UNION ALL SELECT 1001, 2, 'ws', 's', 'd', 'y', '{}', false, 1, to_timestamp(200)");
    int64_t seen = 0, pages = 0;
    char at[64] = "-infinity", after[32] = "0";
    for (bool more = true; more; pages++) {
        PGresult *r = due_scan(pg, "{0,1,2}", at, after, "{}", "64", "16");
        assert_true(PQntuples(r) <= 64);
        int n = store_due_take(r, 64, 16, &more);
        /* every page ends at partition 0's 16th row, until it has no more */
        if (more) {
            assert_string_equal(PQgetvalue(r, n - 1, 1), "0");
            snprintf(at, sizeof at, "%s", PQgetvalue(r, n - 1, STORE_DUE_AT_COL));
            snprintf(after, sizeof after, "%s", PQgetvalue(r, n - 1, 0));
        }
        seen += n;
        PQclear(r);
        assert_true(pages < 20);
    }
    assert_int_equal(seen, 102); /* every head once, none skipped */
    /* one index range per partition, each cut at its share */
    exec_ok(pg, "SET enable_seqscan = off");
    const char *params[] = {"-infinity", "0", "{}", "64", "{0,1,2}", "16"};
    Buf q;
    buf_init(&q);
    buf_puts(&q, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ");
    buf_puts(&q, STORE_SQL_DUE);
    PGresult *r = exec_params(pg, q.data, 6, params);
    Buf plan;
    buf_init(&plan);
    for (int i = 0; i < PQntuples(r); i++) {
        buf_puts(&plan, PQgetvalue(r, i, 0));
        buf_putc(&plan, '\n');
    }
    PQclear(r);
    if (strstr(plan.data, "rt_retries_part_due") == NULL)
        fail_msg("the due scan does not use rt_retries_part_due:\n%s", plan.data);
    for (const char *p = plan.data; (p = strstr(p, "Index Scan")) != NULL; p++) {
        const char *a = strstr(p, "(actual rows=");
        if (a && atoi(a + strlen("(actual rows=")) > 16)
            fail_msg("an index range read more than its share:\n%s", plan.data);
    }
    exec_ok(pg, "RESET enable_seqscan");
    buf_deinit(&plan);
    buf_deinit(&q);
    PQfinish(pg);
}

/* A page load reads the rows of the user's own partition only. */
static void test_load_reads_the_users_partition(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    exec_ok(pg,
            "INSERT INTO rt_retries (job_id, partition, workspace_id, source_id,"
            " destination_id, user_id, payload, parked) VALUES"
            " (1, 2, 'ws', 's', 'd', 'u', '{}', false), (2, 2, 'ws', 's', 'd', 'u', '{}', true),"
            " (3, 1, 'ws', 's', 'd', 'u', '{}', true), (4, 2, 'ws', 's', 'd', 'u', '{}', true)");
    const char *p[] = {"{d}", "{u}", "{1}", "10", "{2}"};
    PGresult *r = exec_params(pg, STORE_SQL_LOAD, 5, p);
    assert_int_equal(PQntuples(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 0), "2");
    assert_string_equal(PQgetvalue(r, 1, 0), "4");
    assert_string_equal(PQgetvalue(r, 0, STORE_LOAD_INDEX_COL), "1");
    PQclear(r);
    PQfinish(pg);
}

/* Cursors come back only for partitions whose lease row shows the owner
 * at the epoch asked for. */
static void test_cursors_only_of_leases_held(void **state)
{
    PGconn *pg = db_open();
    if (pg == NULL)
        skip();
    exec_ok(pg, "UPDATE leases SET owner = 'me', epoch = 3 WHERE stage = 'router'"
                " AND partition IN (0, 1)");
    exec_ok(pg, "UPDATE leases SET owner = 'other', epoch = 4 WHERE stage = 'router'"
                " AND partition = 2");
    exec_ok(pg, "UPDATE cursors SET last_job_id = 40 + partition WHERE stage = 'router'");
    /* 0 held at 3; 1 held but at another epoch; 2 someone else's */
    const char *p[] = {"me", "{0,1,2}", "{3,2,4}"};
    PGresult *r = exec_params(pg, STORE_SQL_CURSORS, 3, p);
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "0");
    assert_string_equal(PQgetvalue(r, 0, 1), "40");
    PQclear(r);
    PQfinish(pg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_array_escapes_quotes_and_backslashes),
        cmocka_unit_test(test_claim_probes_rows_only_when_there_are_any),
        cmocka_unit_test(test_flush_writes_rows_deletes_and_dead_letters),
        cmocka_unit_test(test_flush_keeps_one_head_per_user),
        cmocka_unit_test(test_claim_sees_rows_before_and_after),
        cmocka_unit_test(test_due_scan_pages_over_given_partitions),
        cmocka_unit_test(test_due_scan_cuts_the_page_at_a_partition_share),
        cmocka_unit_test(test_load_reads_the_users_partition),
        cmocka_unit_test(test_cursors_only_of_leases_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
