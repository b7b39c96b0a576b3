/* Tests gateway/ingest.c: validation, enrichment and the encoded job rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "common/ids.h"
#include "common/jobq.h"
#include "common/utf8.h"
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
    const char *body =
        "{\"userId\":\"u1\",\"event\":\"Signed Up\",\"properties\":{\"plan\":\"pro/x\"}}";
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

/* Decodes one COPY text field in place (\\, \t, \n, \r); returns its length. */
static size_t copy_unescape(char *f)
{
    char *o = f;
    for (char *p = f; *p; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        *o++ = *p == 't' ? '\t' : *p == 'n' ? '\n' : *p == 'r' ? '\r' : *p;
    }
    *o = '\0';
    return (size_t)(o - f);
}

/* Every row: six tab-separated fields, valid UTF-8 without NUL, a payload
 * that strict json-c parses completely. Fills payloads (parsed, caller
 * puts), raws (decoded payload text, caller frees) and keys. */
static int check_rows(IngestOut *o, json_object **payloads, char **raws, char (*keys)[1024],
                      int max)
{
    assert_true(utf8_valid(o->rows.data, o->rows.len));
    assert_null(memchr(o->rows.data, '\0', o->rows.len));
    char *copy = strdup(o->rows.data);
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        assert_true(n < max);
        char *f[7];
        int nf = 0;
        f[nf++] = line;
        for (char *p = line; *p; p++)
            if (*p == '\t') {
                *p = '\0';
                assert_true(nf < 7);
                f[nf++] = p + 1;
            }
        assert_int_equal(nf, 6);
        assert_string_equal(f[3], "");
        copy_unescape(f[4]);
        snprintf(keys[n], sizeof keys[n], "%s", f[4]);
        size_t plen = copy_unescape(f[5]);
        json_tokener *tok = json_tokener_new();
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        payloads[n] = json_tokener_parse_ex(tok, f[5], (int)plen);
        assert_int_equal(json_tokener_get_error(tok), json_tokener_success);
        assert_int_equal(json_tokener_get_parse_end(tok), plen);
        json_tokener_free(tok);
        assert_non_null(payloads[n]);
        raws[n] = strdup(f[5]);
        n++;
    }
    free(copy);
    assert_int_equal(n, o->nevents);
    return n;
}

/* Parses one body that must be accepted with one event; returns the
 * stored payload text (caller frees) and the ordering key. */
static char *accept_one(IngestKind k, const char *body, size_t len, char key[1024],
                        json_object **parsed)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *msg = NULL;
    int st = ingest_parse(k, body, len, &ctx, &o, &msg);
    if (st != 200)
        fail_msg("refused (%s): %.*s", msg, (int)len, body);
    json_object *j[1];
    char *raw[1];
    char keys[1][1024];
    assert_int_equal(check_rows(&o, j, raw, keys, 1), 1);
    if (key)
        strcpy(key, keys[0]);
    if (parsed)
        *parsed = j[0];
    else
        json_object_put(j[0]);
    ingest_out_deinit(&o);
    return raw[0];
}

static void expect_invalid(IngestKind k, const char *body, size_t len)
{
    IngestOut o;
    ingest_out_init(&o);
    const char *msg = NULL;
    int st = ingest_parse(k, body, len, &ctx, &o, &msg);
    if (st != 400)
        fail_msg("accepted: %.*s", (int)len, body);
    assert_string_equal(msg, INGEST_MSG_INVALID_JSON);
    assert_int_equal(o.nevents, 0);
    assert_int_equal(o.rows.len, 0);
    ingest_out_deinit(&o);
}

#define INVALID(k, lit) expect_invalid(k, lit, sizeof(lit) - 1)

static void test_invalid_utf8_and_surrogates(void **state)
{
    /* raw bytes: stray, overlong, encoded surrogate, above U+10FFFF, cut short */
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\xff\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\xc0\x80\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\xed\xa0\x80\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\xf4\x90\x80\x80\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\xe2\x82\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"\xff\":1}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\xe9\"}");
    /* anywhere in the body, also outside the events */
    INVALID(INGEST_BATCH, "{\"batch\":[{\"userId\":\"u\"}],\"junk\":\"\xff\"}");
    INVALID(INGEST_BATCH,
            "{\"batch\":[{\"userId\":\"u\"},{\"userId\":\"v\",\"p\":{\"q\":[\"\xfe\"]}}]}");
    /* lone surrogate escapes (json-c alone turns them into U+FFFD) */
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\ud800\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\uDBFF\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\udc00\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\ud800x\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\ud800\\u0041\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"\\ud800\\ud800\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"\\ud800\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"\\udc00\":1}");
    /* raw control characters must be escaped in JSON strings */
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"x\ty\"}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"x\x01y\"}");
    expect_invalid(INGEST_TRACK, "{\"userId\":\"u\",\"a\":\"x\0y\"}", 22);
    /* a surrogate pair and multi-byte text are fine, kept as sent */
    const char *ok =
        "{\"userId\":\"u\",\"a\":\"\\ud83d\\ude00 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}";
    json_object *j = NULL;
    char *raw = accept_one(INGEST_TRACK, ok, strlen(ok), NULL, &j);
    assert_non_null(strstr(raw, "\\ud83d\\ude00 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
    assert_string_equal(str(j, "a"), "\xf0\x9f\x98\x80 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    json_object_put(j);
    free(raw);
}

static void test_non_json_numbers(void **state)
{
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":NaN}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":Infinity}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":-Infinity}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":[1,NaN]}");
    INVALID(INGEST_BATCH, "{\"batch\":[{\"userId\":\"u\",\"p\":{\"x\":Infinity}}]}");
    INVALID(INGEST_BATCH, "{\"batch\":[{\"userId\":\"u\"}],\"sentAt\":NaN}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":1.}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":00}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":-01}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":.5}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":+1}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":1e}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":'x'}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":1,}");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\"}/* c */");
    INVALID(INGEST_TRACK, "{\"userId\":\"u\",\"a\":TRUE}");
}

static void test_numbers_and_text_kept_verbatim(void **state)
{
    const char *body = "{\"userId\":\"u\",\"big\":123456789012345678901234567890,"
                       "\"neg\":-123456789012345678901234567890,\"max\":18446744073709551616,"
                       "\"f\":1.50,\"e\":1e400,\"z\":-0,\"x\":-0.0e-5,\"s\":\"a\\/b\\u00e9\","
                       "\"n\":{ \"deep\" : [ 1 , 2 ] },\"t\":\"tab\\there\"}";
    char *raw = accept_one(INGEST_TRACK, body, strlen(body), NULL, NULL);
    /* the client's members come first, exactly as sent, then the enrichment */
    assert_memory_equal(raw, body, strlen(body) - 1);
    assert_int_equal(raw[strlen(body) - 1], ',');
    assert_null(strstr(raw, "18446744073709551615"));
    free(raw);
    /* a numeric id is its text as sent, not a clamped 64-bit value */
    char key[1024];
    const char *num = "{\"userId\":123456789012345678901234567890}";
    raw = accept_one(INGEST_TRACK, num, strlen(num), key, NULL);
    assert_string_equal(key, "123456789012345678901234567890");
    free(raw);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void test_enrichment_replaces_client_fields(void **state)
{
    const char *body =
        "{\"type\":\"identify\",\"userId\":\"u\",\"receivedAt\":\"x\",\"request_ip\":1,"
        "\"rudderId\":\"r\",\"messageId\":\"\",\"\\u0074ype\":\"screen\",\"k\":1}";
    json_object *j = NULL;
    char *raw = accept_one(INGEST_TRACK, body, strlen(body), NULL, &j);
    assert_string_equal(str(j, "type"), "track");
    assert_string_equal(str(j, "receivedAt"), ctx.received_at);
    assert_string_equal(str(j, "request_ip"), "10.1.2.3");
    assert_int_equal(strlen(str(j, "messageId")), 36);
    assert_int_equal(count(raw, "type\""), 1);
    assert_int_equal(count(raw, "\"receivedAt\""), 1);
    assert_int_equal(count(raw, "\"request_ip\""), 1);
    assert_int_equal(count(raw, "\"rudderId\""), 1);
    assert_int_equal(count(raw, "\"messageId\""), 1);
    json_object_put(j);
    free(raw);
    /* a batch event keeps its own type (or none) and its own sentAt */
    const char *b = "{ \"sentAt\" : \"S\", \"batch\" : [ {\"userId\":\"a\",\"type\":\"page\"} ,\n"
                    "{\"userId\":\"b\",\"sentAt\":null}, {\"userId\":\"c\"} ] }";
    IngestOut o;
    ingest_out_init(&o);
    const char *msg = NULL;
    assert_int_equal(ingest_parse(INGEST_BATCH, b, strlen(b), &ctx, &o, &msg), 200);
    json_object *p[3];
    char *raws[3];
    char keys[3][1024];
    assert_int_equal(check_rows(&o, p, raws, keys, 3), 3);
    assert_string_equal(str(p[0], "type"), "page");
    assert_string_equal(str(p[0], "sentAt"), "S");
    json_object *sa = NULL;
    assert_true(json_object_object_get_ex(p[1], "sentAt", &sa));
    assert_null(sa);
    assert_null(str(p[2], "type")); /* stored without a type, as RudderStack does */
    assert_string_equal(str(p[2], "sentAt"), "S");
    for (int i = 0; i < 3; i++) {
        json_object_put(p[i]);
        free(raws[i]);
    }
    ingest_out_deinit(&o);
}

static void test_user_keys(void **state)
{
    /* NUL inside an id: the ordering key, rudderId and payload drop it
     * (Postgres cannot hold it; its JSON functions fail on \u0000) */
    char key[1024];
    json_object *j = NULL;
    const char *body = "{\"userId\":\"a\\u0000b\",\"event\":\"x\"}";
    char *raw = accept_one(INGEST_TRACK, body, strlen(body), key, &j);
    assert_string_equal(key, "ab");
    assert_non_null(strstr(raw, "\"userId\":\"ab\""));
    assert_string_equal(str(j, "userId"), "ab");
    char rid[UUID_STR_LEN];
    ids_rudder_id("ab", "", rid);
    assert_string_equal(str(j, "rudderId"), rid);
    json_object_put(j);
    free(raw);
    /* \u0000 escapes go everywhere; an escaped backslash before "u0000" stays */
    body = "{\"userId\":\"u\",\"p\":{\"\\u0000k\\u0000\":[\"\\u0000\",\"\\\\u0000\"]}}";
    raw = accept_one(INGEST_TRACK, body, strlen(body), key, NULL);
    assert_non_null(strstr(raw, "\"p\":{\"k\":[\"\",\"\\\\u0000\"]}"));
    free(raw);
    body = "{\"batch\":[{\"userId\":\"u\"}],\"sentAt\":\"t\\u0000\"}";
    raw = accept_one(INGEST_BATCH, body, strlen(body), key, &j);
    assert_string_equal(str(j, "sentAt"), "t");
    json_object_put(j);
    free(raw);
    /* a long id is cut on a character boundary; rudderId uses all of it */
    char id[1200], body2[1300];
    size_t n = 0;
    id[n++] = 'x';
    while (n + 2 < 1000) {
        id[n++] = '\xc3';
        id[n++] = '\xa9';
    }
    id[n] = '\0';
    snprintf(body2, sizeof body2, "{\"anonymousId\":\"%s\"}", id);
    raw = accept_one(INGEST_TRACK, body2, strlen(body2), key, &j);
    assert_true(strlen(key) <= INGEST_MAX_USER_KEY);
    assert_true(strlen(key) >= INGEST_MAX_USER_KEY - 3);
    assert_true(utf8_valid(key, strlen(key)));
    assert_memory_equal(key, id, strlen(key));
    ids_rudder_id("", id, rid);
    assert_string_equal(str(j, "rudderId"), rid);
    json_object_put(j);
    free(raw);
}

static void test_pixel_body(void **state)
{
    char *b = ingest_pixel_body(
        "writeKey=k&anonymousId=a1&event=Viewed%20Page&context.page.path=%2Fx&.bad=1");
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
        cmocka_unit_test(test_track_enriched),
        cmocka_unit_test(test_message_id_kept_and_anonymous_key),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_numeric_ids),
        cmocka_unit_test(test_pixel_body),
        cmocka_unit_test(test_invalid_utf8_and_surrogates),
        cmocka_unit_test(test_non_json_numbers),
        cmocka_unit_test(test_numbers_and_text_kept_verbatim),
        cmocka_unit_test(test_enrichment_replaces_client_fields),
        cmocka_unit_test(test_user_keys),
    };
    return cmocka_run_group_tests_name("ingest", tests, NULL, NULL);
}
