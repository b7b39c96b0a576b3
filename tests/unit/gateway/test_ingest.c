/* Tests gateway/ingest.c: validation, enrichment and the encoded job rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "common/ids.h"
#include "common/jobq.h"
#include "gateway/ingest.h"

static const IngestCtx ctx = {"ws1", "src1", "2024-05-01T10:00:00.123Z", "10.1.2.3", 64};

/* Splits the i-th COPY row and returns its payload parsed. */
static json_object *row(IngestOut *o, int i, char *user_id, int *partition)
{
    char *copy = strdup(o->rows.data);
    char *save = NULL;
    char *line = strtok_r(copy, "\n", &save);
    for (int k = 0; k < i; k++)
        line = strtok_r(NULL, "\n", &save);
    assert_non_null(line);
    char *f[6];
    char *s2 = NULL;
    f[0] = strtok_r(line, "\t", &s2);
    for (int k = 1; k < 6; k++)
        f[k] = strtok_r(NULL, "\t", &s2);
    *partition = atoi(f[0]);
    assert_string_equal(f[1], "ws1");
    assert_string_equal(f[2], "src1");
    /* destination_id is empty for gw: strtok skips it, so fields shift */
    strcpy(user_id, f[3]);
    json_object *j = json_tokener_parse(f[4]);
    free(copy);
    assert_non_null(j);
    return j;
}

static const char *str(json_object *o, const char *k)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, k, &v))
        return NULL;
    return json_object_get_string(v);
}

static void test_track_enriched(void **state)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *body = "{\"userId\":\"u1\",\"event\":\"Signed Up\",\"properties\":{\"plan\":\"pro/x\"}}";
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_TRACK, body, strlen(body), &ctx, &o, &msg), 200);
    assert_int_equal(o.nevents, 1);
    char uid[64];
    int part;
    json_object *j = row(&o, 0, uid, &part);
    assert_string_equal(uid, "u1");
    assert_int_equal(part, jobq_partition("ws1", "u1", 64));
    assert_int_equal(o.parts[0], part);
    assert_string_equal(str(j, "type"), "track");
    assert_string_equal(str(j, "event"), "Signed Up");
    assert_string_equal(str(j, "receivedAt"), "2024-05-01T10:00:00.123Z");
    assert_string_equal(str(j, "request_ip"), "10.1.2.3");
    assert_string_equal(str(j, "rudderId"), "5eff0fc3-0944-38fa-9c04-38f62e3890ca");
    assert_int_equal(strlen(str(j, "messageId")), 36);
    /* '/' is not escaped in the stored payload */
    assert_non_null(strstr(o.rows.data, "pro/x"));
    json_object_put(j);
    ingest_out_deinit(&o);
}

static void test_message_id_kept_and_anonymous_key(void **state)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *body = "{\"anonymousId\":\"a1\",\"userId\":\"u1\",\"messageId\":\"m-1\"}";
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_IDENTIFY, body, strlen(body), &ctx, &o, &msg), 200);
    char uid[64];
    int part;
    json_object *j = row(&o, 0, uid, &part);
    assert_string_equal(str(j, "messageId"), "m-1");
    assert_string_equal(str(j, "type"), "identify");
    assert_string_equal(uid, "a1"); /* ordering key: anonymousId first */
    char rid[UUID_STR_LEN];
    ids_rudder_id("u1", "a1", rid);
    assert_string_equal(str(j, "rudderId"), rid);
    json_object_put(j);
    ingest_out_deinit(&o);
}

static void test_batch(void **state)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *body = "{\"batch\":[{\"type\":\"track\",\"event\":\"a\",\"userId\":\"u1\"},"
                       "{\"type\":\"page\",\"anonymousId\":\"x\\ty\",\"sentAt\":\"own\"}],"
                       "\"sentAt\":\"2024-05-01T09:59:59.000Z\"}";
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_BATCH, body, strlen(body), &ctx, &o, &msg), 200);
    assert_int_equal(o.nevents, 2);
    char uid[64];
    int part;
    json_object *a = row(&o, 0, uid, &part);
    assert_string_equal(str(a, "type"), "track");
    assert_string_equal(str(a, "sentAt"), "2024-05-01T09:59:59.000Z");
    json_object_put(a);
    /* a tab inside a value is escaped for COPY, never a raw field separator */
    assert_non_null(strstr(o.rows.data, "x\\\\ty"));
    ingest_out_deinit(&o);
}

static void expect_reject(IngestKind k, const char *body, const char *want)
{
    IngestOut o;
    ingest_out_init(&o);
    /* a previous request's rows must survive a rejected one */
    const char *good = "{\"userId\":\"u\"}";
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_TRACK, good, strlen(good), &ctx, &o, &msg), 200);
    size_t len = o.rows.len;
    assert_int_equal(ingest_parse(k, body, strlen(body), &ctx, &o, &msg), 400);
    assert_string_equal(msg, want);
    assert_int_equal(o.nevents, 1);
    assert_int_equal(o.rows.len, len);
    ingest_out_deinit(&o);
}

static void test_rejections(void **state)
{
    expect_reject(INGEST_TRACK, "{bad", INGEST_MSG_INVALID_JSON);
    expect_reject(INGEST_TRACK, "[1,2]", INGEST_MSG_INVALID_JSON);
    expect_reject(INGEST_TRACK, "{\"userId\":\"u\"} trailing", INGEST_MSG_INVALID_JSON);
    expect_reject(INGEST_TRACK, "", INGEST_MSG_INVALID_JSON);
    expect_reject(INGEST_TRACK, "{\"event\":\"x\"}", INGEST_MSG_NO_IDENTITY);
    expect_reject(INGEST_TRACK, "{\"userId\":\"\",\"anonymousId\":null}", INGEST_MSG_NO_IDENTITY);
    expect_reject(INGEST_BATCH, "{\"batch\":[]}", INGEST_MSG_EMPTY_BATCH);
    expect_reject(INGEST_BATCH, "{}", INGEST_MSG_EMPTY_BATCH);
    expect_reject(INGEST_BATCH, "{\"batch\":{}}", INGEST_MSG_INVALID_JSON);
    expect_reject(INGEST_BATCH, "{\"batch\":[1]}", INGEST_MSG_INVALID_JSON);
    /* one event without identity rejects the whole batch */
    expect_reject(INGEST_BATCH, "{\"batch\":[{\"userId\":\"u\"},{\"event\":\"x\"}]}",
                  INGEST_MSG_NO_IDENTITY);
}

static void test_numeric_ids(void **state)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *body = "{\"userId\":42}";
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_TRACK, body, strlen(body), &ctx, &o, &msg), 200);
    char uid[64];
    int part;
    json_object *j = row(&o, 0, uid, &part);
    assert_string_equal(uid, "42");
    json_object_put(j);
    ingest_out_deinit(&o);
}

static void test_pixel_body(void **state)
{
    char *b = ingest_pixel_body("writeKey=k&anonymousId=a1&event=Viewed%20Page&context.page.path=%2Fx&.bad=1");
    json_object *j = json_tokener_parse(b);
    assert_non_null(j);
    assert_string_equal(str(j, "anonymousId"), "a1");
    assert_string_equal(str(j, "event"), "Viewed Page");
    assert_null(str(j, "writeKey"));
    json_object *ctxo = NULL, *page = NULL;
    assert_true(json_object_object_get_ex(j, "context", &ctxo));
    assert_true(json_object_object_get_ex(ctxo, "page", &page));
    assert_string_equal(str(page, "path"), "/x");
    json_object_put(j);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_track_enriched), cmocka_unit_test(test_message_id_kept_and_anonymous_key),
        cmocka_unit_test(test_batch),          cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_numeric_ids),    cmocka_unit_test(test_pixel_body),
    };
    return cmocka_run_group_tests_name("ingest", tests, NULL, NULL);
}
