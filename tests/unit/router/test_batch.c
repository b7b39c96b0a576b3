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
    batch_format_request(&out, "AM", "{\"ID\":\"d1\"}", jobs, 2, false);
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
    assert_int_equal(batch_parse_answer(text, strlen(text), false, &o, &n, &err), 0);
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

    assert_true(batch_parse_answer("{}", 2, false, &o, &n, &err) < 0);
    assert_true(batch_parse_answer("[{\"batchedRequest\":{}}]", 23, false, &o, &n, &err) < 0);
    assert_true(batch_parse_answer("[{\"metadata\":[{\"x\":1}]}]", 24, false, &o, &n, &err) < 0);
}

/* /routerTransform: the events themselves go out with transformAt router */
static void test_router_transform_request(void **state)
{
    OrderJob *a = order_job_create(11, 1, "ws", "src", "d2", "u1",
                                   "{\"type\":\"track\",\"event\":\"e1\"}", 29);
    OrderJob *jobs[] = {a};
    Buf out;
    buf_init(&out);
    batch_format_request(&out, "WEBHOOK", "{\"ID\":\"d2\"}", jobs, 1, true);
    assert_string_equal(
        out.data, "{\"destType\":\"webhook\",\"input\":["
                  "{\"message\":{\"type\":\"track\",\"event\":\"e1\"},\"metadata\":{\"jobId\":11,"
                  "\"userId\":\"u1\",\"sourceId\":\"src\",\"destinationId\":\"d2\","
                  "\"workspaceId\":\"ws\",\"attemptNum\":0,\"transformAt\":\"router\","
                  "\"dontBatch\":false},\"destination\":{\"ID\":\"d2\"}}]}");
    buf_deinit(&out);
    order_job_free(a);
}

/* {"output": [...]}: an item naming several jobs is each one's outcome, an
 * error item fails its jobs with its status */
static void test_router_transform_answer(void **state)
{
    const char *text =
        "{\"output\":[{\"batchedRequest\":{\"endpoint\":\"https://h/a\"},\"metadata\":"
        "[{\"jobId\":21},{\"jobId\":22}],\"batched\":true,\"statusCode\":200,"
        "\"destination\":{}},"
        "{\"metadata\":[{\"jobId\":23}],\"batched\":false,\"statusCode\":400,"
        "\"error\":\"Invalid URL in destination config\"},"
        "{\"batchedRequest\":[{\"endpoint\":\"p\"},{\"endpoint\":\"q\"}],"
        "\"metadata\":[{\"jobId\":24}],\"statusCode\":200},"
        "{\"metadata\":[{\"jobId\":25}],\"statusCode\":503,\"error\":\"try later\"}]}";
    BatchOut *o;
    int n;
    Err err;
    assert_int_equal(batch_parse_answer(text, strlen(text), true, &o, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(o[0].status, 200);
    assert_int_equal(o[0].nrequests, 1);
    assert_string_equal(o[0].requests[0], "{\"endpoint\":\"https://h/a\"}");
    assert_int_equal(o[0].njobs, 2);
    assert_int_equal(o[0].job_ids[0], 21);
    assert_int_equal(o[0].job_ids[1], 22);
    assert_int_equal(o[1].status, 400);
    assert_int_equal(o[1].nrequests, 0);
    assert_int_equal(o[1].job_ids[0], 23);
    assert_string_equal(o[1].error, "Invalid URL in destination config");
    assert_int_equal(o[2].nrequests, 2);
    assert_string_equal(o[2].requests[1], "{\"endpoint\":\"q\"}");
    assert_int_equal(o[3].status, 503);
    assert_string_equal(o[3].error, "try later");
    batch_outs_free(o, n);

    /* a /batch-shaped answer is not a /routerTransform one, and the other way round */
    const char *arr = "[{\"batchedRequest\":{},\"metadata\":[{\"jobId\":1}]}]";
    assert_true(batch_parse_answer(arr, strlen(arr), true, &o, &n, &err) < 0);
    assert_non_null(strstr(err.msg, "/routerTransform"));
    const char *wrapped = "{\"output\":[]}";
    assert_true(batch_parse_answer(wrapped, strlen(wrapped), false, &o, &n, &err) < 0);
    assert_true(batch_parse_answer("{\"output\":{}}", 13, true, &o, &n, &err) < 0);
    assert_int_equal(batch_parse_answer(wrapped, strlen(wrapped), true, &o, &n, &err), 0);
    assert_int_equal(n, 0);
    batch_outs_free(o, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_answer),
        cmocka_unit_test(test_router_transform_request),
        cmocka_unit_test(test_router_transform_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
