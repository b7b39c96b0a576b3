/* Tests router/batch.c: the /batch request for a group of rt jobs and the
 * parsing of the transformer's answer (merged requests, refusals, job ids). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router/batch.h"

static void test_request(void **state)
{
    OrderJob *a =
        order_job_create(7, 3, "ws", "src", "d1", "u\"1", "{\"endpoint\":\"https://x\"}", 24);
    OrderJob *b =
        order_job_create(9, 3, "ws", "src", "d1", "u2", "{\"endpoint\":\"https://y\"}", 24);
    b->attempts = 2;
    OrderJob *jobs[] = {a, b};
    Buf out;
    buf_init(&out);
    batch_format_request(&out, "AM", "{\"ID\":\"d1\"}", jobs, 2);
    assert_string_equal(
        out.data,
        "{\"destType\":\"am\",\"input\":["
        "{\"message\":{\"endpoint\":\"https://x\"},\"metadata\":{\"jobId\":7,\"userId\":\"u\\\"1\","
        "\"sourceId\":\"src\",\"destinationId\":\"d1\",\"workspaceId\":\"ws\",\"attemptNum\":0,"
        "\"transformAt\":\"processor\",\"dontBatch\":false},\"destination\":{\"ID\":\"d1\"}},"
        "{\"message\":{\"endpoint\":\"https://y\"},\"metadata\":{\"jobId\":9,\"userId\":\"u2\","
        "\"sourceId\":\"src\",\"destinationId\":\"d1\",\"workspaceId\":\"ws\",\"attemptNum\":2,"
        "\"transformAt\":\"processor\",\"dontBatch\":false},\"destination\":{\"ID\":\"d1\"}}]}");
    buf_deinit(&out);
    order_job_free(a);
    order_job_free(b);
}

static void test_answer(void **state)
{
    const char *text =
        "[{\"batchedRequest\":{\"endpoint\":\"https://api2.amplitude.com/batch\"},"
        "\"metadata\":[{\"jobId\":2},{\"jobId\":3}],\"destination\":{}},"
        "{\"batched\":false,\"statusCode\":400,\"error\":\"Both userId and deviceId cannot be"
        " undefined\",\"metadata\":[{\"jobId\":4}]},"
        "{\"batchedRequest\":[{\"endpoint\":\"a\"},{\"endpoint\":\"b\"}],\"statusCode\":200,"
        "\"metadata\":[{\"jobId\":5}]},"
        "{\"statusCode\":0,\"metadata\":[{\"jobId\":6}]}]";
    BatchOut *o;
    int n;
    Err err;
    assert_int_equal(batch_parse_answer(text, strlen(text), &o, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(o[0].status, 200);
    assert_int_equal(o[0].nrequests, 1);
    assert_string_equal(o[0].requests[0], "{\"endpoint\":\"https://api2.amplitude.com/batch\"}");
    assert_int_equal(o[0].njobs, 2);
    assert_int_equal(o[0].job_ids[0], 2);
    assert_int_equal(o[0].job_ids[1], 3);
    assert_int_equal(o[1].status, 400);
    assert_int_equal(o[1].nrequests, 0);
    assert_string_equal(o[1].error, "Both userId and deviceId cannot be undefined");
    assert_int_equal(o[2].nrequests, 2);
    assert_string_equal(o[2].requests[1], "{\"endpoint\":\"b\"}");
    /* 200 without a request: the job cannot be delivered, retried */
    assert_int_equal(o[3].status, 500);
    batch_outs_free(o, n);

    assert_true(batch_parse_answer("{}", 2, &o, &n, &err) < 0);
    assert_true(batch_parse_answer("[{\"batchedRequest\":{}}]", 23, &o, &n, &err) < 0);
    assert_true(batch_parse_answer("[{\"metadata\":[{\"x\":1}]}]", 24, &o, &n, &err) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
