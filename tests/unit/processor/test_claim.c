/* Tests processor/claim.c: cursors per partition and the lease epoch they
 * were loaded under, the active set, the moves of a batch and the adaptive
 * row limits (a full partition doubles its share, the whole claim stays
 * near claim_batch). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "processor/claim.h"

static void test_moves_only_partitions_read(void **state)
{
    ClaimPlan c;
    claim_plan_init(&c, 8, 100);
    for (int p = 0; p < 8; p++)
        claim_plan_set_cursor(&c, p, 10 * p, 1);
    int act[] = {1, 3, 5};
    claim_plan_set_active(&c, act, 3);
    claim_plan_begin(&c);
    claim_plan_row(&c, 3, 31);
    claim_plan_row(&c, 5, 52);
    claim_plan_row(&c, 3, 33);
    claim_plan_end(&c);
    int parts[8];
    int64_t olds[8], news[8];
    int n = claim_plan_moves(&c, parts, olds, news);
    assert_int_equal(n, 2);
    assert_int_equal(parts[0], 3);
    assert_int_equal(olds[0], 30);
    assert_int_equal(news[0], 33);
    assert_int_equal(parts[1], 5);
    assert_int_equal(olds[1], 50);
    assert_int_equal(news[1], 52);
    /* not committed: the next batch starts from the same cursors */
    claim_plan_begin(&c);
    assert_int_equal(claim_plan_moves(&c, parts, olds, news), 0);
    claim_plan_row(&c, 3, 33);
    claim_plan_end(&c);
    claim_plan_committed(&c);
    assert_int_equal(c.cursor[3], 33);
    assert_int_equal(c.cursor[5], 50);
    claim_plan_deinit(&c);
}

static void test_epochs(void **state)
{
    ClaimPlan c;
    claim_plan_init(&c, 4, 100);
    assert_false(claim_plan_is_loaded(&c, 2, 1));
    claim_plan_set_cursor(&c, 2, 7, 3);
    assert_true(claim_plan_is_loaded(&c, 2, 3));
    assert_false(claim_plan_is_loaded(&c, 2, 4)); /* taken again since: read it again */
    assert_false(claim_plan_is_loaded(&c, 2, 0));
    claim_plan_set_cursor(&c, 9, 7, 3); /* out of range: ignored */
    assert_false(claim_plan_is_loaded(&c, 9, 3));
    int act[] = {2};
    claim_plan_set_active(&c, act, 1);
    assert_true(claim_plan_has(&c, 2));
    claim_plan_forget(&c);
    assert_false(claim_plan_is_loaded(&c, 2, 3));
    assert_int_equal(c.nactive, 0);
    claim_plan_deinit(&c);
}

static void test_limits(void **state)
{
    ClaimPlan c;
    claim_plan_init(&c, 4, 1000);
    for (int p = 0; p < 4; p++)
        claim_plan_set_cursor(&c, p, 0, 1);
    int act[] = {0, 1, 2, 3};
    claim_plan_set_active(&c, act, 4);
    int base = 1000 / 4 / 2 + 4;
    for (int p = 0; p < 4; p++)
        assert_int_equal(c.limit[p], base);
    int64_t id = 0;
    /* partition 0 fills its limit three times: it doubles up to the cap */
    for (int round = 0; round < 5; round++) {
        claim_plan_begin(&c);
        for (int k = 0; k < c.limit[0]; k++)
            claim_plan_row(&c, 0, ++id);
        claim_plan_row(&c, 1, ++id);
        claim_plan_end(&c);
        claim_plan_committed(&c);
    }
    assert_int_equal(c.limit[0], 1000); /* alone full: the whole claim */
    assert_int_equal(c.limit[1], base);
    /* a quiet round: back to the base */
    claim_plan_begin(&c);
    claim_plan_end(&c);
    assert_int_equal(c.limit[0], base);
    /* a smaller active set: a bigger base share each */
    int two[] = {1, 2};
    claim_plan_set_active(&c, two, 2);
    assert_int_equal(c.limit[1], 1000 / 2 / 2 + 4);
    assert_int_equal(c.limit[2], 1000 / 2 / 2 + 4);
    claim_plan_deinit(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moves_only_partitions_read),
        cmocka_unit_test(test_epochs),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
