/* Tests common/jscan.c against tricky JSON texts. */
#include <setjmp.h>
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

static void test_malformed(void **state)
{
    const char *bad[] = {"[1,", "[{\"a\":}]", "[\"x]", "{\"a\" 1}", "[1 2]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        JSpan d = jscan_doc(bad[i], strlen(bad[i]));
        JIter it;
        JSpan el, k;
        int n = 0;
        if (jscan_array(d, &it)) {
            while (jscan_next_element(&it, &el) && n < 10)
                n++;
        } else if (jscan_object(d, &it)) {
            while (jscan_next_member(&it, &k, &el) && n < 10)
                n++;
        }
        assert_true(n < 10);
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
