/* Tests common/utf8.c: validation, cuts on character boundaries, escaping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"

static void test_valid(void **state)
{
    const char *good[] = {"", "plain ascii text longer than eight", "caf\xc3\xa9",
                          "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(utf8_valid(good[i], strlen(good[i])));
    const char *bad[] = {"\xff", "abc\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",
                         "\xf4\x90\x80\x80", "\xc3", "\xe2\x82", "0123456789\xf0\x9f\x98",
                         "\xf8\x88\x80\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(utf8_valid(bad[i], strlen(bad[i])));
    assert_true(utf8_valid("a\0b", 3));
}

static void test_cut(void **state)
{
    const char *s = "ab\xc3\xa9" "cd\xf0\x9f\x98\x80";
    size_t n = strlen(s);
    assert_int_equal(utf8_cut(s, n, 100), n);
    assert_int_equal(utf8_cut(s, n, 2), 2);
    assert_int_equal(utf8_cut(s, n, 3), 2); /* inside é */
    assert_int_equal(utf8_cut(s, n, 4), 4);
    assert_int_equal(utf8_cut(s, n, 7), 6); /* inside the emoji */
    assert_int_equal(utf8_cut(s, n, 9), 6);
    assert_int_equal(utf8_cut(s, n, 10), 10);
    for (size_t m = 0; m <= n; m++)
        assert_true(utf8_valid(s, utf8_cut(s, n, m)));
}

static void test_escaped(void **state)
{
    char *e = utf8_dup_escaped("ok\xff\xc3\xa9\0z\xe2\x82", 9, 0);
    assert_string_equal(e, "ok\\xff\xc3\xa9\\x00z\\xe2\\x82");
    assert_true(utf8_valid(e, strlen(e)));
    free(e);
    e = utf8_dup_escaped("ab\xc3\xa9", 4, 3);
    assert_string_equal(e, "ab");
    free(e);
    assert_null(utf8_dup_escaped(NULL, 0, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_cut),
        cmocka_unit_test(test_escaped),
    };
    return cmocka_run_group_tests_name("utf8", tests, NULL, NULL);
}
