/* Warehouse rows (see wh_rows.h). Each row gets, in this order:
 *   1. the event's own data flattened (properties / traits / userProperties
 *      without a prefix, context with "context_"), skipping any column that
 *      is one of RudderStack's own columns for that event type (as
 *      IsRudderReservedColumn does: the event cannot overwrite them);
 *   2. RudderStack's columns (id, anonymous_id, user_id, sent_at,
 *      timestamp, received_at, original_timestamp, channel, context_ip,
 *      context_request_ip, context_passed_ip, plus event_text/event, name,
 *      group_id, previous_id by type), which win over anything of step 1.
 * uuid_ts is the load's: the loader sets it. */
#include "batchrouter/wh_rows.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/jsonu.h"
#include "common/xalloc.h"

void wh_rows_init(WhRows *r)
{
    memset(r, 0, sizeof *r);
    hmap_init(&r->names);
}

static void row_free(WhRow *row)
{
    for (int i = 0; i < row->ncols; i++)
        free(row->cols[i].value.text);
    free(row->cols);
}

void wh_rows_clear(WhRows *r)
{
    for (int i = 0; i < r->n; i++)
        row_free(&r->rows[i]);
    free(r->rows);
    HMapEntry *e;
    for (size_t i = 0; hmap_next(&r->names, &i, &e);)
        free(e->value);
    hmap_deinit(&r->names);
    wh_rows_init(r);
}

static const char *intern(HMap *names, const char *name)
{
    char *s = hmap_get(names, name);
    if (s == NULL) {
        s = xstrdup(name);
        hmap_put(names, name, s);
    }
    return s;
}

const WhCol *wh_row_get(const WhRow *row, const char *name)
{
    for (int i = 0; i < row->ncols; i++)
        if (strcmp(row->cols[i].name, name) == 0)
            return &row->cols[i];
    return NULL;
}

/* Sets name to v (taking v->text); an existing column is replaced. */
static void row_set(WhRow *row, const char *name, WhValue *v)
{
    for (int i = 0; i < row->ncols; i++) {
        if (strcmp(row->cols[i].name, name) == 0) {
            free(row->cols[i].value.text);
            row->cols[i].value = *v;
            return;
        }
    }
    if (row->ncols == row->cap) {
        row->cap = row->cap ? row->cap * 2 : 32;
        row->cols = xrealloc(row->cols, (size_t)row->cap * sizeof *row->cols);
    }
    WhCol *c = &row->cols[row->ncols++];
    c->name = intern(row->names, name);
    c->value = *v;
}

static void row_set_text(WhRow *row, const char *name, WhType t, const char *text)
{
    WhValue v = {t, false, xstrdup(text)};
    row_set(row, name, &v);
}

static void row_set_json(WhRow *row, const char *name, json_object *j)
{
    WhValue v;
    if (wh_value_infer(j, &v))
        row_set(row, name, &v);
}

/* The columns RudderStack sets itself for each kind of row. */
static const char *const common_cols[] = {"id",
                                          "anonymous_id",
                                          "user_id",
                                          "sent_at",
                                          "timestamp",
                                          "received_at",
                                          "original_timestamp",
                                          "channel",
                                          "context_ip",
                                          "context_request_ip",
                                          "context_passed_ip",
                                          "uuid_ts", /* the loader's */
                                          NULL};

static bool is_reserved_col(const char *type, const char *name)
{
    for (int i = 0; common_cols[i]; i++)
        if (strcmp(common_cols[i], name) == 0)
            return true;
    if (strcmp(type, "track") == 0)
        return strcmp(name, "event_text") == 0 || strcmp(name, "event") == 0;
    if (strcmp(type, "page") == 0 || strcmp(type, "screen") == 0)
        return strcmp(name, "name") == 0;
    if (strcmp(type, "group") == 0)
        return strcmp(name, "group_id") == 0;
    if (strcmp(type, "alias") == 0)
        return strcmp(name, "previous_id") == 0;
    return false;
}

/* Flattens obj into row: nested objects join their keys with "_"; the
 * column name is transformName of the whole path. */
static void flatten(WhRow *row, const char *type, json_object *obj, const char *prefix, int depth)
{
    if (obj == NULL || !json_object_is_type(obj, json_type_object) || depth > 32)
        return;
    json_object_object_foreach(obj, key, val)
    {
        char *path = xasprintf("%s%s", prefix, key);
        if (val != NULL && json_object_is_type(val, json_type_object)) {
            char *sub = xasprintf("%s_", path);
            flatten(row, type, val, sub, depth + 1);
            free(sub);
        } else {
            char col[WH_NAME_BUF];
            wh_name_column(path, col, sizeof col);
            if (col[0] != '\0' && !is_reserved_col(type, col))
                row_set_json(row, col, val);
        }
        free(path);
    }
}

/* The text of an id (string or number); jsonu_id_text's static buffer is
 * not for worker threads. */
static const char *id_text(json_object *j)
{
    if (j != NULL && json_object_is_type(j, json_type_string))
        return json_object_get_string(j);
    return j ? json_object_to_json_string(j) : "";
}

static WhRow *row_new(WhRows *out, const char *table)
{
    if (out->n == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 16;
        out->rows = xrealloc(out->rows, (size_t)out->cap * sizeof *out->rows);
    }
    WhRow *row = &out->rows[out->n++];
    memset(row, 0, sizeof *row);
    snprintf(row->table, sizeof row->table, "%s", table);
    row->names = &out->names;
    return row;
}

static bool blank(json_object *j)
{
    if (j == NULL || json_object_is_type(j, json_type_null))
        return true;
    return json_object_is_type(j, json_type_string) && json_object_get_string_len(j) == 0;
}

static json_object *first_of(json_object *ev, const char *a, const char *b)
{
    json_object *v = jsonu_get_ci(ev, a);
    if (blank(v) && b != NULL) {
        json_object *ctx = json_object_object_get(ev, "context");
        v = ctx ? json_object_object_get(ctx, b) : NULL;
    }
    return blank(v) ? NULL : v;
}

/* RudderStack's default columns, which override the event's data. */
static void set_common(WhRow *row, json_object *ev, const char *message_id, const char *received_at)
{
    row_set_text(row, "id", WH_TYPE_STRING, message_id);
    row_set_json(row, "anonymous_id", first_of(ev, "anonymousId", NULL));
    row_set_json(row, "user_id", first_of(ev, "userId", NULL));
    row_set_json(row, "sent_at", first_of(ev, "sentAt", NULL));
    row_set_json(row, "timestamp", first_of(ev, "timestamp", NULL));
    row_set_json(row, "original_timestamp", first_of(ev, "originalTimestamp", NULL));
    row_set_json(row, "channel", first_of(ev, "channel", NULL));
    json_object *ctx = json_object_object_get(ev, "context");
    json_object *cip = ctx ? json_object_object_get(ctx, "ip") : NULL;
    json_object *rip = json_object_object_get(ev, "request_ip");
    row_set_json(row, "context_ip", !blank(cip) ? cip : rip);
    row_set_json(row, "context_request_ip", rip);
    row_set_json(row, "context_passed_ip", cip);
    char ts[32];
    if (wh_timestamp_parse(received_at, ts))
        row_set_text(row, "received_at", WH_TYPE_DATETIME, ts);
}

static void copy_cols(WhRow *dst, const WhRow *src)
{
    for (int i = 0; i < src->ncols; i++) {
        WhValue v = src->cols[i].value;
        v.text = xstrdup(v.text);
        row_set(dst, src->cols[i].name, &v);
    }
}

int wh_rows_add_event(WhRows *out, const char *json, size_t len, const WhEventMeta *meta, Err *err)
{
    json_tokener *tok = json_tokener_new();
    json_object *ev = json_tokener_parse_ex(tok, json, (int)len);
    json_tokener_free(tok);
    if (ev == NULL || !json_object_is_type(ev, json_type_object)) {
        json_object_put(ev);
        return err_set(err, ERR_INVALID, "the event is not a JSON object");
    }
    char type[32];
    snprintf(type, sizeof type, "%s", jsonu_str_ci(ev, "type", ""));
    for (char *p = type; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    static const char *const types[] = {"track", "identify", "page", "screen", "group", "alias"};
    static const char *const tables[] = {"tracks",  "identifies", "pages",
                                         "screens", "groups",     "aliases"};
    int k = -1;
    for (int i = 0; i < 6; i++)
        if (strcmp(type, types[i]) == 0)
            k = i;
    if (k < 0) {
        json_object_put(ev);
        return err_set(err, ERR_INVALID, "unknown event type \"%s\"", type);
    }
    /* the source and destination go into the context, as RudderStack's
     * WH_POPULATE_SRC_DEST_INFO_IN_CONTEXT does */
    json_object *ctx = json_object_object_get(ev, "context");
    if (ctx == NULL || !json_object_is_type(ctx, json_type_object)) {
        ctx = json_object_new_object();
        json_object_object_add(ev, "context", ctx);
    }
    if (meta->source_id && meta->source_id[0])
        json_object_object_add(ctx, "sourceId", json_object_new_string(meta->source_id));
    if (meta->destination_id && meta->destination_id[0]) {
        json_object_object_add(ctx, "destinationId", json_object_new_string(meta->destination_id));
        json_object_object_add(ctx, "destinationType", json_object_new_string("POSTGRES"));
    }
    json_object *mid = jsonu_get_ci(ev, "messageId");
    const char *message_id = blank(mid) ? meta->auto_id : id_text(mid);
    const char *received_at = jsonu_str_ci(ev, "receivedAt", "");
    char ts[32];
    if (!wh_timestamp_parse(received_at, ts))
        received_at = meta->now_iso;
    int first = out->n;
    WhRow *row = row_new(out, tables[k]);
    flatten(row, type, ctx, "context_", 0);
    if (k == 0) { /* track */
        json_object *evn = jsonu_get_ci(ev, "event");
        const char *text =
            evn && json_object_is_type(evn, json_type_string) ? json_object_get_string(evn) : "";
        set_common(row, ev, message_id, received_at);
        if (text[0])
            row_set_text(row, "event_text", WH_TYPE_STRING, text);
        char value[WH_NAME_BUF], table[WH_NAME_BUF];
        wh_name_event_value(text, value, sizeof value);
        if (value[0])
            row_set_text(row, "event", WH_TYPE_STRING, value);
        wh_name_event_table(text, table, sizeof table);
        if (table[0]) {
            /* tracks row is out->rows[first]; row_new may move it */
            WhRow *er = row_new(out, table);
            WhRow *tr = &out->rows[first];
            flatten(er, type, jsonu_get_ci(ev, "properties"), "", 0);
            flatten(er, type, jsonu_get_ci(ev, "userProperties"), "", 0);
            copy_cols(er, tr);
        }
    } else if (k == 1) { /* identify */
        flatten(row, type, jsonu_get_ci(ev, "traits"), "", 0);
        /* the user's columns: the identify's data without RudderStack's */
        json_object *uid = first_of(ev, "userId", NULL);
        if (uid != NULL) {
            WhRow *ur = row_new(out, "users");
            WhRow *ir = &out->rows[first];
            ur->is_users = true;
            copy_cols(ur, ir);
            row_set_text(ur, "id", WH_TYPE_STRING, id_text(uid));
            if (wh_timestamp_parse(received_at, ts))
                row_set_text(ur, "received_at", WH_TYPE_DATETIME, ts);
            ir = &out->rows[first];
            set_common(ir, ev, message_id, received_at);
        } else {
            set_common(row, ev, message_id, received_at);
        }
    } else {
        if (k == 2 || k == 3) {
            flatten(row, type, jsonu_get_ci(ev, "properties"), "", 0);
            set_common(row, ev, message_id, received_at);
            json_object *name = jsonu_get_ci(ev, "name");
            if (blank(name)) {
                json_object *props = jsonu_get_ci(ev, "properties");
                name = props ? jsonu_get_ci(props, "name") : NULL;
            }
            row_set_json(row, "name", blank(name) ? NULL : name);
        } else if (k == 4) {
            flatten(row, type, jsonu_get_ci(ev, "traits"), "", 0);
            set_common(row, ev, message_id, received_at);
            row_set_json(row, "group_id", first_of(ev, "groupId", NULL));
        } else {
            flatten(row, type, jsonu_get_ci(ev, "traits"), "", 0);
            set_common(row, ev, message_id, received_at);
            row_set_json(row, "previous_id", first_of(ev, "previousId", NULL));
        }
    }
    json_object_put(ev);
    return 0;
}
