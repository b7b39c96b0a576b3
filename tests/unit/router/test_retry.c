/* Tests router/retry.c: the retry delays and when a job is given up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "router/retry.h"

static void test_delay_doubles_up_to_the_cap(void **state)
{
    RouterConfig rc = {
        .retry_initial_s = 10, .retry_max_s = 300, .max_attempts = 3, .max_retry_minutes = 180};
    RetryPolicy p = retry_policy(&rc);
    assert_int_equal(retry_delay_ms(&p, 1), 10000);
    assert_int_equal(retry_delay_ms(&p, 2), 20000);
    assert_int_equal(retry_delay_ms(&p, 3), 40000);
    assert_int_equal(retry_delay_ms(&p, 5), 160000);
    assert_int_equal(retry_delay_ms(&p, 6), 300000);
    assert_int_equal(retry_delay_ms(&p, 1000), 300000);
    rc.retry_initial_s = 0;
    p = retry_policy(&rc);
    assert_int_equal(retry_delay_ms(&p, 4), 0);
}

static void test_given_up_after_attempts_and_time(void **state)
{
    RouterConfig rc = {
        .retry_initial_s = 1, .retry_max_s = 1, .max_attempts = 3, .max_retry_minutes = 1};
    RetryPolicy p = retry_policy(&rc);
    int64_t t0 = 1000000;
    assert_false(retry_exhausted(&p, 3, t0, t0 + 59999));  /* attempts, not time */
    assert_false(retry_exhausted(&p, 2, t0, t0 + 600000)); /* time, not attempts */
    assert_true(retry_exhausted(&p, 3, t0, t0 + 60000));
    rc.max_retry_minutes = 0;
    p = retry_policy(&rc);
    assert_true(retry_exhausted(&p, 3, t0, t0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delay_doubles_up_to_the_cap),
        cmocka_unit_test(test_given_up_after_attempts_and_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
