/* Tests router/store.c: array literals for parameters, the claim and the
 * status flush as formatted from an OrderFlush. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

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
    int64_t cur[] = {5, 0, 7};
    store_format_claim(&b, cur, 3, 40);
    assert_non_null(strstr(b.data, "unnest('{0,1,2}'::int[], '{5,0,7}'::bigint[])"));
    assert_non_null(strstr(b.data, "CASE WHEN r.any THEN EXISTS"));
    assert_non_null(strstr(b.data, "y.job_id = j.job_id"));
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
    OrderFlush f = {jobs, 4, parts, olds, news, 1, 1};
    StoreFlush s;
    store_flush_init(&s);
    store_format_flush(&s, &f);
    assert_int_equal(s.ncopies, 2);
    assert_string_equal(s.retry_rows.data,
                        "10\t3\tws\tsrc\td\tu\\tx\t{\"a\":1}\tf\t2\t1970-01-01 00:00:01.000+00\t"
                        "1970-01-01 00:01:01.000+00\t500\tdestination answered 500\n"
                        "11\t3\tws\tsrc\td\tu\\tx\t{}\tt\t0\t\\N\t\\N\t\\N\t\\N\n");
    /* only rows are deleted (the dead letter had none), and promoted after */
    assert_non_null(
        strstr(s.sql.data, "DELETE FROM rt_retries WHERE job_id = ANY('{9}'::bigint[])"));
    assert_non_null(strstr(s.sql.data, "x.job_id <> ALL('{9}'::bigint[])"));
    assert_non_null(
        strstr(s.dead_rows.data, "rt\t8\trouter\t2\tws\tsrc\td\tw\t400\tdestination answered 400"));
    assert_non_null(strstr(s.sql.data, "check_cursors"));
    assert_true(strstr(s.sql.data, "INSERT INTO rt_retries") < strstr(s.sql.data, "DELETE FROM"));
    store_flush_deinit(&s);
    for (int i = 0; i < 4; i++)
        order_job_free(jobs[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_array_escapes_quotes_and_backslashes),
        cmocka_unit_test(test_claim_probes_rows_only_when_there_are_any),
        cmocka_unit_test(test_flush_writes_rows_deletes_and_dead_letters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
