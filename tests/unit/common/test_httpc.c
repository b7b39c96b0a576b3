/* Tests common/httpc.c: router.connect_to entries and the CA file are
 * checked before any request uses them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/httpc.h"

static void test_connect_to(void **state)
{
    struct event_base *base = event_base_new();
    Httpc *h = httpc_create(base, 4);
    Err err;
    assert_int_equal(httpc_set_connect_to(h, "api2.amplitude.com:443:127.0.0.1:9443", &err), 0);
    assert_int_equal(
        httpc_set_connect_to(h, " a.com:443:127.0.0.1:1 , b.com:443:[::1]:2,::127.0.0.1:3", &err),
        0);
    assert_int_equal(httpc_set_connect_to(h, "", &err), 0);
    assert_int_equal(httpc_set_connect_to(h, NULL, &err), 0);
    assert_true(httpc_set_connect_to(h, "a.com:443:127.0.0.1", &err) < 0);
    assert_true(httpc_set_connect_to(h, "a.com:https:127.0.0.1:1", &err) < 0);
    assert_true(httpc_set_connect_to(h, "a.com:443:127.0.0.1:1:5", &err) < 0);
    assert_true(httpc_set_connect_to(h, "a.com:443:[::1:1", &err) < 0);
    assert_int_equal(httpc_set_ca_file(h, "", &err), 0);
    assert_true(httpc_set_ca_file(h, "/nonexistent/ca.pem", &err) < 0);
    httpc_destroy(h);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_to),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
