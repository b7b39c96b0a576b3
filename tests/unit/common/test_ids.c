/* Tests common/ids.c: MD5 against RFC 1321 vectors, rudderId against known
 * values (MD5 of "userId:anonymousId" with version 3 / RFC 4122 variant bits),
 * and the shape of random UUIDs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/ids.h"

static void hex(const uint8_t *d, char *out)
{
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_md5_rfc1321(void **state)
{
    static const char *const vec[][2] = {
        {"", "d41d8cd98f00b204e9800998ecf8427e"},
        {"a", "0cc175b9c0f1b6a831c399e269772661"},
        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
        {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
        {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
        {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
         "57edf4a22be3c955ac49da2e2107b67a"},
    };
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        uint8_t d[16];
        char h[33];
        md5_digest(vec[i][0], strlen(vec[i][0]), d);
        hex(d, h);
        assert_string_equal(h, vec[i][1]);
    }
}

static void test_rudder_id(void **state)
{
    char id[UUID_STR_LEN];
    ids_rudder_id("u1", "", id);
    assert_string_equal(id, "5eff0fc3-0944-38fa-9c04-38f62e3890ca");
    ids_rudder_id("", "a1", id);
    assert_string_equal(id, "b09c6e0b-7298-3c66-88e1-7af047315456");
    ids_rudder_id("u2", "a2", id);
    assert_string_equal(id, "ae6da75e-6497-3d62-80c4-6245b37f1500");
    /* long ids take the heap path */
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ids_rudder_id(big, big, id);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '3');
}

static void test_uuid_v4(void **state)
{
    char a[UUID_STR_LEN], b[UUID_STR_LEN];
    for (int i = 0; i < 1000; i++) {
        ids_uuid_v4(a);
        assert_int_equal(strlen(a), 36);
        assert_int_equal(a[8], '-');
        assert_int_equal(a[14], '4');
        assert_non_null(strchr("89ab", a[19]));
    }
    ids_uuid_v4(b);
    assert_string_not_equal(a, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_md5_rfc1321),
        cmocka_unit_test(test_rudder_id),
        cmocka_unit_test(test_uuid_v4),
    };
    return cmocka_run_group_tests_name("ids", tests, NULL, NULL);
}
