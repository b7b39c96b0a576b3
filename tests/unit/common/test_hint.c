/* Tests the endpoint templates of common/hint.c: placeholders, errors, and
 * what a subscriber advertises by default (no sockets here; the topology is
 * tested in tests/integration/test_hint.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/hint.h"

static void test_placeholders(void **state)
{
    char out[256], want[256];
    Err err;
    assert_int_equal(
        hint_format_endpoint(out, sizeof out, "ipc:///tmp/pintle-%s-%p.ipc", "router", &err), 0);
    snprintf(want, sizeof want, "ipc:///tmp/pintle-router-%d.ipc", (int)getpid());
    assert_string_equal(out, want);

    char host[256];
    assert_int_equal(gethostname(host, sizeof host), 0);
    assert_int_equal(hint_format_endpoint(out, sizeof out, "tcp://%h:7070/%%", "x", &err), 0);
    snprintf(want, sizeof want, "tcp://%s:7070/%%", host);
    assert_string_equal(out, want);

    assert_int_equal(hint_format_endpoint(out, sizeof out, "tcp://10.1.2.3:7070", "x", &err), 0);
    assert_string_equal(out, "tcp://10.1.2.3:7070");
    assert_int_equal(hint_format_endpoint(out, sizeof out, "", "x", &err), 0);
    assert_string_equal(out, "");
}

static void test_errors(void **state)
{
    char out[16];
    Err err;
    assert_int_equal(hint_format_endpoint(out, sizeof out, "ipc:///%x", "s", &err), ERR_INVALID);
    assert_non_null(strstr(err.msg, "unknown placeholder \"%x\""));
    assert_int_equal(hint_format_endpoint(out, sizeof out, "ipc:///a%", "s", &err), ERR_INVALID);
    /* 16 bytes hold 15 characters and the terminator */
    assert_int_equal(hint_format_endpoint(out, sizeof out, "ipc:///123456789", "s", &err),
                     ERR_INVALID);
    assert_non_null(strstr(err.msg, "longer than 15 bytes"));
    assert_int_equal(hint_format_endpoint(out, sizeof out, "ipc:///12345678", "s", &err), 0);
    assert_string_equal(out, "ipc:///12345678");
}

static void test_advertise(void **state)
{
    char out[256], want[300], host[256];
    Err err;
    assert_int_equal(gethostname(host, sizeof host), 0);
    /* ipc and a concrete tcp address: advertised as bound */
    assert_int_equal(hint_format_advertise(out, sizeof out, "ipc:///tmp/a.ipc", "", "s", &err), 0);
    assert_string_equal(out, "ipc:///tmp/a.ipc");
    assert_int_equal(
        hint_format_advertise(out, sizeof out, "tcp://127.0.0.1:7070", NULL, "s", &err), 0);
    assert_string_equal(out, "tcp://127.0.0.1:7070");
    /* a wildcard cannot be connected to from elsewhere: the host name */
    const char *wild[] = {"tcp://0.0.0.0:7070", "tcp://*:7070", "tcp://[::]:7070", "tcp://:::7070"};
    snprintf(want, sizeof want, "tcp://%s:7070", host);
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        assert_int_equal(hint_format_advertise(out, sizeof out, wild[i], "", "s", &err), 0);
        assert_string_equal(out, want);
    }
    /* an explicit advertise wins, with placeholders */
    assert_int_equal(hint_format_advertise(out, sizeof out, "tcp://0.0.0.0:7070",
                                           "tcp://10.0.0.5:7070/%s", "router", &err),
                     0);
    assert_string_equal(out, "tcp://10.0.0.5:7070/router");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placeholders),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_advertise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
