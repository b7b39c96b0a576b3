/* Tests common/jscan.c against tricky JSON texts. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "common/jscan.h"

static void test_members(void **state)
{
    const char *t = " [ {\"output\": {\"a\":\"}]\\\"\",\"b\":[1,{\"c\":2}]}, \"statusCode\": 200, \"metadata\":{\"jobId\":17}},"
                    "{\"statusCode\":400,\"error\":\"bad \\u00e9 \\ud83d\\ude00\",\"metadata\":[{\"jobId\":18}]} ] ";
    JSpan doc = jscan_doc(t, strlen(t));
    JIter it;
    assert_true(jscan_array(doc, &it));
    JSpan el;
    assert_true(jscan_next_element(&it, &el));
    JSpan out, sc, md, jid;
    assert_true(jscan_get(el, "output", &out));
    assert_int_equal(out.n, strlen("{\"a\":\"}]\\\"\",\"b\":[1,{\"c\":2}]}"));
    assert_true(jscan_get(el, "statusCode", &sc));
    int64_t v;
    assert_true(jscan_int(sc, &v));
    assert_int_equal(v, 200);
    assert_true(jscan_get(el, "metadata", &md));
    assert_true(jscan_get(md, "jobId", &jid));
    assert_true(jscan_int(jid, &v));
    assert_int_equal(v, 17);
    assert_true(jscan_next_element(&it, &el));
    JSpan e;
    assert_true(jscan_get(el, "error", &e));
    Buf b;
    buf_init(&b);
    assert_true(jscan_string(e, &b));
    assert_string_equal(b.data, "bad \xc3\xa9 \xf0\x9f\x98\x80");
    buf_deinit(&b);
    assert_false(jscan_next_element(&it, &el));
    assert_false(it.failed);
    assert_true(jscan_is_empty(jscan_doc("{ }", 3)));
    assert_false(jscan_is_empty(jscan_doc("{\"a\":1}", 7)));
}

/* Walks v completely (members of objects, elements of arrays, recursively)
 * and returns false as soon as any level reports malformed text. */
static bool walk(JSpan v, int depth)
{
    JIter it;
    JSpan k, el;
    if (depth > 32)
        return false;
    if (jscan_object(v, &it)) {
        while (jscan_next_member(&it, &k, &el))
            if (!walk(el, depth + 1))
                return false;
        return !it.failed;
    }
    if (jscan_array(v, &it)) {
        while (jscan_next_element(&it, &el))
            if (!walk(el, depth + 1))
                return false;
        return !it.failed;
    }
    char t = jscan_type(v);
    return t != 0 && t != 'o' && t != 'a'; /* an unterminated object or array */
}

static void test_malformed(void **state)
{
    /* the scanner must notice each of these where a caller looks */
    const char *bad[] = {"[1,", "[{\"a\":}]", "[\"x]", "{\"a\" 1}", "[1 2]", "{\"a\":1,}", "[",
                         "{\"a\":[1,{\"b\":}]}", "[\"a\\\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        JSpan d = jscan_doc(bad[i], strlen(bad[i]));
        if (walk(d, 0))
            fail_msg("malformed text accepted: %s", bad[i]);
    }
    /* and accept their well-formed neighbours, so the check above can fail */
    const char *good[] = {"[1]", "[{\"a\":null}]", "[\"x\"]", "{\"a\": 1}", "[1, 2]", "{}", "[]",
                          "{\"a\":[1,{\"b\":true}]}", "[\"a\\\\\"]"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        JSpan d = jscan_doc(good[i], strlen(good[i]));
        if (!walk(d, 0))
            fail_msg("well-formed text refused: %s", good[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_members),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests_name("jscan", tests, NULL, NULL);
}
