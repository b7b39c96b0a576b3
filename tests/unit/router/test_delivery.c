/* Tests router/delivery.c: payload -> HTTP request for every body format,
 * params and headers, and the response classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "router/delivery.h"

static const char *header(const Delivery *d, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < d->nheaders; i++)
        if (strncasecmp(d->headers[i], name, n) == 0 && d->headers[i][n] == ':')
            return d->headers[i] + n + 2;
    return NULL;
}

static void test_json(void **state)
{
    Delivery d;
    Err err;
    const char *p = "{\"version\":\"1\",\"type\":\"REST\",\"method\":\"POST\",\"endpoint\":\"http://h/x?a=1\","
                    "\"headers\":{\"content-type\":\"application/json\",\"X-Key\":\"k\\\"1\",\"n\":5},"
                    "\"params\":{\"q\":\"a b&c\",\"z\":null,\"num\":2},"
                    "\"body\":{\"JSON\":{\"event\":\"e\\u00e9\",\"x\":[1, 2]},\"JSON_ARRAY\":{},\"XML\":{},\"FORM\":{}},\"files\":{}}";
    assert_int_equal(delivery_build(&d, p, &err), 0);
    assert_string_equal(d.method, "POST");
    assert_string_equal(d.url.data, "http://h/x?a=1&q=a%20b%26c&num=2");
    /* the JSON body is forwarded verbatim */
    assert_string_equal(d.body.data, "{\"event\":\"e\\u00e9\",\"x\":[1, 2]}");
    assert_true(d.has_body);
    assert_string_equal(header(&d, "content-type"), "application/json");
    assert_string_equal(header(&d, "X-Key"), "k\"1");
    assert_string_equal(header(&d, "n"), "5");
    assert_non_null(header(&d, "User-Agent"));
    delivery_deinit(&d);
}

static void test_formats(void **state)
{
    Delivery d;
    Err err;
    assert_int_equal(delivery_build(&d, "{\"method\":\"put\",\"endpoint\":\"http://h\",\"body\":{\"JSON\":{},"
                                        "\"FORM\":{\"a\":\"x y\",\"b\":1}}}", &err), 0);
    assert_string_equal(d.method, "PUT");
    assert_string_equal(d.body.data, "a=x%20y&b=1");
    assert_string_equal(header(&d, "Content-Type"), "application/x-www-form-urlencoded");
    delivery_deinit(&d);

    assert_int_equal(delivery_build(&d, "{\"endpoint\":\"http://h\",\"body\":{\"XML\":{\"payload\":\"<a>1</a>\"}}}", &err), 0);
    assert_string_equal(d.body.data, "<a>1</a>");
    assert_string_equal(header(&d, "Content-Type"), "application/xml");
    delivery_deinit(&d);

    assert_int_equal(delivery_build(&d, "{\"endpoint\":\"http://h\",\"body\":{\"JSON_ARRAY\":{\"batch\":\"[{\\\"a\\\":1}]\"}}}", &err), 0);
    assert_string_equal(d.body.data, "[{\"a\":1}]");
    delivery_deinit(&d);

    assert_int_equal(delivery_build(&d, "{\"endpoint\":\"http://h\",\"body\":{\"GZIP\":{\"payload\":\"hello hello hello\"}}}", &err), 0);
    assert_string_equal(header(&d, "Content-Encoding"), "gzip");
    char out[64];
    uLongf outlen = sizeof out;
    z_stream z;
    memset(&z, 0, sizeof z);
    inflateInit2(&z, 16 + MAX_WBITS);
    z.next_in = (unsigned char *)d.body.data;
    z.avail_in = (uInt)d.body.len;
    z.next_out = (unsigned char *)out;
    z.avail_out = (uInt)outlen;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    out[z.total_out] = '\0';
    inflateEnd(&z);
    assert_string_equal(out, "hello hello hello");
    delivery_deinit(&d);

    /* GET sends no body even if one is given */
    assert_int_equal(delivery_build(&d, "{\"method\":\"GET\",\"endpoint\":\"http://h\",\"body\":{\"JSON\":{\"a\":1}}}", &err), 0);
    assert_false(d.has_body);
    delivery_deinit(&d);
}

static void test_errors(void **state)
{
    Delivery d;
    Err err;
    assert_true(delivery_build(&d, "[1]", &err) < 0);
    delivery_deinit(&d);
    assert_true(delivery_build(&d, "{\"method\":\"POST\"}", &err) < 0);
    assert_non_null(strstr(err.msg, "no endpoint"));
    delivery_deinit(&d);
    assert_true(delivery_build(&d, "{\"method\":\"TRACE\",\"endpoint\":\"http://h\"}", &err) < 0);
    assert_non_null(strstr(err.msg, "unsupported method"));
    delivery_deinit(&d);
    /* header injection is refused */
    assert_int_equal(delivery_build(&d, "{\"endpoint\":\"http://h\",\"headers\":{\"a\":\"x\\r\\nEvil: 1\"}}", &err), 0);
    assert_null(header(&d, "a"));
    delivery_deinit(&d);
}

static void test_classify(void **state)
{
    assert_int_equal(delivery_classify(200), DELIVERY_OK);
    assert_int_equal(delivery_classify(204), DELIVERY_OK);
    assert_int_equal(delivery_classify(400), DELIVERY_ABORT);
    assert_int_equal(delivery_classify(404), DELIVERY_ABORT);
    assert_int_equal(delivery_classify(408), DELIVERY_RETRY);
    assert_int_equal(delivery_classify(429), DELIVERY_RETRY);
    assert_int_equal(delivery_classify(500), DELIVERY_RETRY);
    assert_int_equal(delivery_classify(503), DELIVERY_RETRY);
    assert_int_equal(delivery_classify(0), DELIVERY_RETRY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_classify),
    };
    return cmocka_run_group_tests_name("delivery", tests, NULL, NULL);
}
