#include "gateway/ingest.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "common/ids.h"
#include "common/jobq.h"
#include "common/jsonu.h"
#include "common/xalloc.h"

static const char *const kind_types[] = {NULL,     "track", "identify", "page",
                                         "screen", "group", "alias",    NULL};

const char *ingest_kind_type(IngestKind k)
{
    return kind_types[k];
}

void ingest_out_init(IngestOut *o)
{
    buf_init(&o->rows);
    o->parts = NULL;
    o->nevents = 0;
    o->cap = 0;
}

void ingest_out_reset(IngestOut *o)
{
    buf_reset(&o->rows);
    o->nevents = 0;
}

void ingest_out_deinit(IngestOut *o)
{
    buf_deinit(&o->rows);
    free(o->parts);
    ingest_out_init(o);
}

void ingest_format_now(char out[32])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(tv.tv_usec / 1000) % 1000);
}

/* Identity text of a message field: strings and numbers count, "" does not. */
static const char *identity(json_object *ev, const char *key, char *tmp, size_t tmpsz)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(ev, key, &v) || v == NULL)
        return "";
    const char *s = jsonu_id_text(v);
    snprintf(tmp, tmpsz, "%s", s);
    return tmp;
}

/* Enriches one event and appends it as a row. Returns false if it has no identity. */
static bool add_event(json_object *ev, const char *type, json_object *batch_sent_at,
                      const IngestCtx *ctx, IngestOut *out)
{
    char uid_buf[512], aid_buf[512];
    const char *uid = identity(ev, "userId", uid_buf, sizeof uid_buf);
    const char *aid = identity(ev, "anonymousId", aid_buf, sizeof aid_buf);
    if (uid[0] == '\0' && aid[0] == '\0')
        return false;
    if (type != NULL)
        json_object_object_add(ev, "type", json_object_new_string(type));
    json_object *mid = NULL;
    if (!json_object_object_get_ex(ev, "messageId", &mid) || mid == NULL ||
        (json_object_is_type(mid, json_type_string) && json_object_get_string_len(mid) == 0)) {
        char id[UUID_STR_LEN];
        ids_uuid_v4(id);
        json_object_object_add(ev, "messageId", json_object_new_string(id));
    }
    if (batch_sent_at != NULL && !json_object_object_get_ex(ev, "sentAt", NULL))
        json_object_object_add(ev, "sentAt", json_object_get(batch_sent_at));
    json_object_object_add(ev, "receivedAt", json_object_new_string(ctx->received_at));
    json_object_object_add(ev, "request_ip", json_object_new_string(ctx->request_ip));
    char rid[UUID_STR_LEN];
    ids_rudder_id(uid, aid, rid);
    json_object_object_add(ev, "rudderId", json_object_new_string(rid));

    /* Ordering key: anonymousId, else userId (DESIGN §4). */
    const char *key = aid[0] ? aid : uid;
    size_t plen = 0;
    const char *payload = jsonu_to_string(ev, &plen);
    JobRow row = {
        .partition = jobq_partition(ctx->workspace_id, key, ctx->partitions),
        .workspace_id = ctx->workspace_id,
        .source_id = ctx->source_id,
        .destination_id = "",
        .user_id = key,
        .payload = payload,
        .payload_len = plen,
    };
    jobq_copy_row(&out->rows, &row);
    if (out->nevents == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 16;
        out->parts = xrealloc(out->parts, sizeof(int) * (size_t)out->cap);
    }
    out->parts[out->nevents++] = row.partition;
    return true;
}

int ingest_parse(IngestKind kind, const char *body, size_t len, const IngestCtx *ctx,
                 IngestOut *out, const char **msg)
{
    size_t rows_mark = out->rows.len;
    int events_mark = out->nevents;
    int status = 200;
    json_tokener *tok = json_tokener_new();
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    /* trailing garbage after the document is invalid too */
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    while (root != NULL && used < len &&
           (body[used] == ' ' || body[used] == '\n' || body[used] == '\r' || body[used] == '\t'))
        used++;
    if (root == NULL || jerr != json_tokener_success || used != len ||
        !json_object_is_type(root, json_type_object)) {
        *msg = INGEST_MSG_INVALID_JSON;
        status = 400;
        goto out;
    }
    if (kind == INGEST_BATCH || kind == INGEST_IMPORT) {
        json_object *batch = NULL;
        json_object_object_get_ex(root, "batch", &batch);
        if (batch != NULL && !json_object_is_type(batch, json_type_array)) {
            *msg = INGEST_MSG_INVALID_JSON;
            status = 400;
            goto out;
        }
        size_t n = batch ? json_object_array_length(batch) : 0;
        if (n == 0) {
            *msg = INGEST_MSG_EMPTY_BATCH;
            status = 400;
            goto out;
        }
        json_object *sent_at = NULL;
        json_object_object_get_ex(root, "sentAt", &sent_at);
        for (size_t i = 0; i < n; i++) {
            json_object *ev = json_object_array_get_idx(batch, i);
            if (ev == NULL || !json_object_is_type(ev, json_type_object)) {
                *msg = INGEST_MSG_INVALID_JSON;
                status = 400;
                goto out;
            }
            if (!add_event(ev, NULL, sent_at, ctx, out)) {
                *msg = INGEST_MSG_NO_IDENTITY;
                status = 400;
                goto out;
            }
        }
    } else if (!add_event(root, ingest_kind_type(kind), NULL, ctx, out)) {
        *msg = INGEST_MSG_NO_IDENTITY;
        status = 400;
    }
out:
    json_object_put(root);
    if (status != 200) {
        out->rows.len = rows_mark;
        if (out->rows.data)
            out->rows.data[rows_mark] = '\0';
        out->nevents = events_mark;
    }
    return status;
}

static void set_path(json_object *root, const char *key, const char *value)
{
    char *k = xstrdup(key);
    json_object *cur = root;
    char *p = k;
    char *dot;
    while ((dot = strchr(p, '.')) != NULL) {
        *dot = '\0';
        json_object *next = NULL;
        if (!json_object_object_get_ex(cur, p, &next) ||
            !json_object_is_type(next, json_type_object)) {
            next = json_object_new_object();
            json_object_object_add(cur, p, next);
        }
        cur = next;
        p = dot + 1;
    }
    json_object_object_add(cur, p, json_object_new_string(value));
    free(k);
}

char *ingest_pixel_body(const char *query)
{
    json_object *root = json_object_new_object();
    struct evkeyvalq params;
    if (query != NULL && evhttp_parse_query_str(query, &params) == 0) {
        for (struct evkeyval *kv = params.tqh_first; kv; kv = kv->next.tqe_next) {
            if (strcmp(kv->key, "writeKey") == 0 || kv->key[0] == '\0' ||
                strstr(kv->key, "..") != NULL || kv->key[0] == '.' ||
                kv->key[strlen(kv->key) - 1] == '.')
                continue;
            set_path(root, kv->key, kv->value);
        }
        evhttp_clear_headers(&params);
    }
    char *s = xstrdup(jsonu_to_string(root, NULL));
    json_object_put(root);
    return s;
}
