/* libFuzzer target for the gateway's request parser and enricher
 * (gateway/ingest.c). The first byte picks the endpoint kind; the rest is
 * the body. Checks the invariants the writer relies on: a 200 adds one
 * COPY row per event, a rejection adds nothing, and every row is one that
 * Postgres (a UTF8 database) and the consumers accept: valid UTF-8 without
 * NUL (nor \u0000 escapes), six COPY text fields with only valid escapes, a
 * payload that is strict JSON carrying the enrichment. */
#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "common/xalloc.h"
#include "gateway/ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decodes a COPY text field [p, end) into out; false on an escape COPY
 * would read differently from what we meant (\N, octal, \x, ...). */
static bool copy_field(const char *p, const char *end, char *out, size_t *outlen)
{
    size_t o = 0;
    for (; p < end; p++) {
        if (*p == '\t' || *p == '\n' || *p == '\r')
            return false; /* raw separators inside a field */
        if (*p != '\\') {
            out[o++] = *p;
            continue;
        }
        if (++p >= end)
            return false;
        switch (*p) {
        case '\\':
            out[o++] = '\\';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        default:
            return false;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return true;
}

static void check_row(const char *line, const char *end, char *scratch)
{
    const char *f[7];
    int nf = 0;
    f[nf++] = line;
    for (const char *p = line; p < end; p++)
        if (*p == '\t') {
            ASSERT(nf < 6);
            f[nf++] = p + 1;
        }
    ASSERT(nf == 6);
    size_t len = 0;
    /* partition, workspace, source, destination (empty), user key */
    for (int i = 0; i < 5; i++) {
        ASSERT(copy_field(f[i], f[i + 1] - 1, scratch, &len));
        if (i == 3)
            ASSERT(len == 0);
        if (i == 4) {
            ASSERT(len <= INGEST_MAX_USER_KEY);
            ASSERT(utf8_valid(scratch, len));
        }
    }
    ASSERT(copy_field(f[5], end, scratch, &len));
    ASSERT(utf8_valid(scratch, len));
    ASSERT(memchr(scratch, '\0', len) == NULL);
    /* no \u0000 escape either: Postgres's JSON functions refuse the document */
    for (size_t i = 0; i < len; i++)
        if (scratch[i] == '\\') {
            ASSERT(len - i < 6 || memcmp(scratch + i, "\\u0000", 6) != 0);
            i++;
        }
    json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *j = json_tokener_parse_ex(tok, scratch, (int)len);
    ASSERT(j != NULL && json_tokener_get_error(tok) == json_tokener_success);
    ASSERT(json_tokener_get_parse_end(tok) == len);
    json_tokener_free(tok);
    ASSERT(json_object_is_type(j, json_type_object));
    ASSERT(json_object_object_get_ex(j, "receivedAt", NULL));
    ASSERT(json_object_object_get_ex(j, "request_ip", NULL));
    ASSERT(json_object_object_get_ex(j, "rudderId", NULL));
    ASSERT(json_object_object_get_ex(j, "messageId", NULL));
    json_object_put(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    IngestKind kind = (IngestKind)(data[0] % 8);
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    IngestCtx ctx = {"ws", "src", "2024-01-01T00:00:00.000Z", "127.0.0.1", 64};
    IngestOut out;
    ingest_out_init(&out);
    const char *msg = NULL;
    int st = ingest_parse(kind, body, len, &ctx, &out, &msg);
    if (st == 200) {
        ASSERT(out.nevents > 0);
        ASSERT(utf8_valid(out.rows.data, out.rows.len));
        ASSERT(memchr(out.rows.data, '\0', out.rows.len) == NULL);
        ASSERT(out.rows.len > 0 && out.rows.data[out.rows.len - 1] == '\n');
        char *scratch = xmalloc(out.rows.len + 1);
        int lines = 0;
        const char *line = out.rows.data;
        for (const char *p = line; p < out.rows.data + out.rows.len; p++)
            if (*p == '\n') {
                check_row(line, p, scratch);
                line = p + 1;
                lines++;
            }
        free(scratch);
        ASSERT(lines == out.nevents);
        for (int i = 0; i < out.nevents; i++)
            ASSERT(out.parts[i] >= 0 && out.parts[i] < 64);
    } else {
        ASSERT(st == 400 && msg != NULL);
        ASSERT(out.nevents == 0 && out.rows.len == 0);
    }
    ingest_out_deinit(&out);
    /* pixel query strings */
    char *q = xstrndup(body, len);
    free(ingest_pixel_body(q));
    free(q);
    return 0;
}
