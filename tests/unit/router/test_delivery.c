/* Tests router/delivery.c: payload -> HTTP request for every body format,
 * params and headers, and the response classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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

/* The FORM body of one payload whose FORM object is form (JSON text). */
static char *form_of(const char *form)
{
    Delivery d;
    Err err;
    char p[2048];
    snprintf(p, sizeof p, "{\"endpoint\":\"http://h\",\"body\":{\"FORM\":%s}}", form);
    assert_int_equal(delivery_build(&d, p, &err), 0);
    char *out = strdup(d.body.data ? d.body.data : "");
    delivery_deinit(&d);
    return out;
}

#define ASSERT_FORM(form, want)                                                                    \
    do {                                                                                           \
        char *got_ = form_of(form);                                                                \
        assert_string_equal(got_, want);                                                           \
        free(got_);                                                                                \
    } while (0)

/* FORM values as RudderStack's router encodes them: fmt.Sprint of what
 * encoding/json decodes, url.Values order (keys sorted) and escaping. */
static void test_form_values(void **state)
{
    /* strings: decoded, space as '+', keys in byte order */
    ASSERT_FORM("{\"b\":\"x y\",\"a\":\"\\u00e9&=\"}", "a=%C3%A9%26%3D&b=x+y");
    /* the official AM alias/group shape: an array of one JSON text */
    ASSERT_FORM("{\"api_key\":\"k\",\"mapping\":[\"{\\\"user_id\\\":\\\"u1\\\"}\"]}",
                "api_key=k&mapping=%5B%7B%22user_id%22%3A%22u1%22%7D%5D");
    /* arrays: elements separated by spaces, nested arrays, strings raw */
    ASSERT_FORM("{\"a\":[\"x\",1,true,null,[2,\"y z\"]],\"e\":[]}",
                "a=%5Bx+1+true+%3Cnil%3E+%5B2+y+z%5D%5D&e=%5B%5D");
    /* numbers as float64 %v: shortest digits, %e from exponent 6 and below -4 */
    ASSERT_FORM("{\"a\":5,\"b\":-2.5,\"c\":123456,\"d\":1234567,\"e\":1700000000000,"
                "\"f\":0.0001,\"g\":0.00001,\"h\":1e21,\"i\":0,\"j\":1.10,\"k\":3e-7}",
                "a=5&b=-2.5&c=123456&d=1.234567e%2B06&e=1.7e%2B12&f=0.0001&g=1e-05&h=1e%2B21&i=0&j=1.1"
                "&k=3e-07");
    /* booleans and null */
    ASSERT_FORM("{\"t\":true,\"f\":false,\"n\":null}", "f=false&n=%3Cnil%3E&t=true");
    /* objects: map[k:v] with sorted keys, nested */
    ASSERT_FORM("{\"m\":{\"z\":1,\"a\":\"s\",\"o\":{\"q\":[1]}}}",
                "m=map%5Ba%3As+o%3Amap%5Bq%3A%5B1%5D%5D+z%3A1%5D");
    /* a repeated key: the last value wins, as encoding/json decodes it */
    ASSERT_FORM("{\"a\":\"1\",\"a\":\"2\"}", "a=2");
}

static void test_param_values(void **state)
{
    Delivery d;
    Err err;
    assert_int_equal(delivery_build(&d, "{\"endpoint\":\"http://h/x\",\"params\":{\"s\":\"a b\","
                                        "\"n\":1234567,\"b\":true,\"a\":[\"x\",2],\"o\":{\"k\":1}}}", &err), 0);
    /* objects as their JSON text, the rest fmt.Sprint'ed */
    assert_string_equal(d.url.data,
                        "http://h/x?s=a%20b&n=1.234567e%2B06&b=true&a=%5Bx%202%5D&o=%7B%22k%22%3A1%7D");
    delivery_deinit(&d);
}

static void test_formats(void **state)
{
    Delivery d;
    Err err;
    assert_int_equal(delivery_build(&d, "{\"method\":\"put\",\"endpoint\":\"http://h\",\"body\":{\"JSON\":{},"
                                        "\"FORM\":{\"a\":\"x y\",\"b\":1}}}", &err), 0);
    assert_string_equal(d.method, "PUT");
    assert_string_equal(d.body.data, "a=x+y&b=1");
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
        cmocka_unit_test(test_form_values),
        cmocka_unit_test(test_param_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_classify),
    };
    return cmocka_run_group_tests_name("delivery", tests, NULL, NULL);
}
