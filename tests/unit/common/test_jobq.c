/* Tests common/jobq.c: partitioning and COPY encoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/jobq.h"

static void test_partition(void **state)
{
    int p = jobq_partition("ws", "user-1", 64);
    assert_true(p >= 0 && p < 64);
    assert_int_equal(p, jobq_partition("ws", "user-1", 64));
    /* the workspace is part of the key */
    int same = 0;
    for (int i = 0; i < 100; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        same += jobq_partition("ws-a", u, 64) == jobq_partition("ws-b", u, 64);
    }
    assert_true(same < 20);
    assert_int_equal(jobq_partition("ws", "x", 1), 0);
}

static void test_copy_row(void **state)
{
    Buf b;
    buf_init(&b);
    const char payload[] = "{\"a\":\"x\\\\y\"}\t\n";
    JobRow r = {7, "ws", "src", "", "u\t1", payload, strlen(payload)};
    jobq_copy_row(&b, &r);
    assert_string_equal(b.data, "7\tws\tsrc\t\tu\\t1\t{\"a\":\"x\\\\\\\\y\"}\\t\\n\n");
    buf_deinit(&b);
}

static void test_dead_letter_row(void **state)
{
    Buf b;
    buf_init(&b);
    DeadLetter d = {"rt", 42, "router", 7, "ws", "src", "dst", "u\t1", 400, "destination answered 400",
                    NULL, "{\"a\":\"x\\ny\"}", 2};
    jobq_copy_dead_letter(&b, &d);
    /* columns in the order of JOBQ_SQL_COPY_DEAD_LETTERS; a NULL response is \N */
    assert_string_equal(b.data, "rt\t42\trouter\t7\tws\tsrc\tdst\tu\\t1\t400\t"
                                "destination answered 400\t\\N\t{\"a\":\"x\\\\ny\"}\t2\n");
    assert_non_null(strstr(JOBQ_SQL_COPY_DEAD_LETTERS, "(queue, job_id, stage, partition,"));
    buf_deinit(&b);
}

static void test_sort_partitions(void **state)
{
    int p[] = {5, 1, 5, 3, 1};
    assert_int_equal(jobq_sort_partitions(p, 5), 3);
    assert_int_equal(p[0], 1);
    assert_int_equal(p[1], 3);
    assert_int_equal(p[2], 5);
}

static void test_write_sql(void **state)
{
    Buf b;
    buf_init(&b);
    int parts[] = {1, 4};
    jobq_format_write(&b, JOBQ_GW, "gw_jobs_3", parts, 2, true, false);
    assert_string_equal(b.data, "BEGIN;SELECT count(pg_advisory_xact_lock(1, p)) FROM "
                                "unnest('{1,4}'::int[]) AS p;COPY \"gw_jobs_3\" (partition, "
                                "workspace_id, source_id, destination_id, user_id, payload) FROM "
                                "STDIN;");
    buf_deinit(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition),
        cmocka_unit_test(test_copy_row),
        cmocka_unit_test(test_dead_letter_row),
        cmocka_unit_test(test_sort_partitions),
        cmocka_unit_test(test_write_sql),
    };
    return cmocka_run_group_tests_name("jobq", tests, NULL, NULL);
}
