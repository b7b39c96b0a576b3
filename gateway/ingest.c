#include "gateway/ingest.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "common/ids.h"
#include "common/jobq.h"
#include "common/jsonu.h"
#include "common/utf8.h"
#include "common/xalloc.h"

enum {
    KEY_OTHER,
    KEY_TYPE,
    KEY_MESSAGE_ID,
    KEY_SENT_AT,
    KEY_RECEIVED_AT,
    KEY_REQUEST_IP,
    KEY_RUDDER_ID,
    KEY_USER_ID,
    KEY_ANONYMOUS_ID,
    KEY_BATCH,
};

typedef struct Member {
    const char *start; /* the key's opening quote */
    const char *end;   /* one past the value */
    const char *val;   /* the value's first byte */
    int key;           /* KEY_* */
} Member;

typedef struct EventSpan {
    int first, n; /* members[first .. first+n) */
} EventSpan;

struct IngestScan {
    const char *end;
    Member *m;
    int nm, capm;
    EventSpan *ev;
    int nev, capev;
    const char *sent_at, *sent_at_end; /* batch: the top-level sentAt value */
    bool has_nul;                      /* some string holds a \u0000 escape */
    Buf key;                           /* scratch: ordering key and rudderId input */
    Buf uid, aid;
};
typedef struct IngestScan IngestScan;

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
    o->scan = NULL;
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
    if (o->scan != NULL) {
        free(o->scan->m);
        free(o->scan->ev);
        buf_deinit(&o->scan->key);
        buf_deinit(&o->scan->uid);
        buf_deinit(&o->scan->aid);
        free(o->scan);
    }
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

/* ---- Text-level validation and member spans ----------------------------
 *
 * json-c (strict mode) checks the structure; this one pass over the same
 * text checks what json-c lets through and what Postgres or the consumers
 * would refuse (see the header), and records where each event's members
 * start and end, so that the payload can be the client's text with the
 * enrichment spliced in. It trusts the structure json-c has verified. */

typedef enum Role { ROLE_PLAIN, ROLE_EVENT, ROLE_ROOT } Role;

/* Deeper than json-c's default depth (32), which is checked first. */
#define SCAN_MAX_DEPTH 64

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of a \uXXXX escape at p (p at the backslash), or -1. */
static int u_escape(const char *p, const char *end)
{
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
        return -1;
    int v = 0;
    for (int i = 2; i < 6; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* p at the opening quote. Returns one past the closing quote, or NULL if
 * the string has a raw control character, invalid UTF-8, a bad escape or a
 * surrogate escape that is not a high-low pair. Notes \u0000 escapes. */
static const char *scan_string(IngestScan *s, const char *p)
{
    const char *end = s->end;
    for (p++; p < end;) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            if (p + 1 >= end)
                return NULL;
            char e = p[1];
            if (e == 'u') {
                int v = u_escape(p, end);
                if (v < 0 || (v >= 0xdc00 && v <= 0xdfff))
                    return NULL;
                if (v >= 0xd800 && v <= 0xdbff) {
                    int lo = u_escape(p + 6, end);
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return NULL;
                    p += 12;
                } else {
                    s->has_nul |= v == 0;
                    p += 6;
                }
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' &&
                e != 't')
                return NULL;
            p += 2;
            continue;
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        /* A maximal run of bytes >= 0x80 holds whole characters if valid. */
        const char *run = p;
        while (p < end && (unsigned char)*p >= 0x80)
            p++;
        if (!utf8_valid(run, (size_t)(p - run)))
            return NULL;
    }
    return NULL;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 8259 number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static const char *scan_number(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p >= end || !is_digit(*p))
        return NULL; /* also NaN, Infinity, -Infinity */
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && *p != ',' && *p != ']' && *p != '}' && *p != ' ' && *p != '\n' && *p != '\r' &&
        *p != '\t')
        return NULL;
    return p;
}

/* Which key of interest the raw key text (between the quotes) names.
 * Escaped keys are decoded first, as every JSON parser would. */
static int key_id(const char *k, size_t n, Role role)
{
    char dec[16];
    if (memchr(k, '\\', n) != NULL) {
        size_t o = 0;
        for (size_t i = 0; i < n; o++) {
            if (o == sizeof dec)
                return KEY_OTHER;
            if (k[i] != '\\') {
                dec[o] = k[i++];
                continue;
            }
            char e = k[i + 1];
            if (e == 'u') {
                int v = u_escape(k + i, k + n);
                if (v < 0 || v >= 0x80)
                    return KEY_OTHER; /* not ASCII: none of ours */
                dec[o] = (char)v;
                i += 6;
                continue;
            }
            dec[o] = e == '/' ? '/' : e == '"' ? '"' : e == '\\' ? '\\' : '\x01';
            i += 2;
        }
        k = dec;
        n = o;
    }
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(k, lit, n) == 0)
    if (role == ROLE_ROOT) {
        if (IS("batch"))
            return KEY_BATCH;
        if (IS("sentAt"))
            return KEY_SENT_AT;
        return KEY_OTHER;
    }
    if (role != ROLE_EVENT)
        return KEY_OTHER;
    switch (n) {
    case 4:
        return IS("type") ? KEY_TYPE : KEY_OTHER;
    case 6:
        return IS("sentAt") ? KEY_SENT_AT : IS("userId") ? KEY_USER_ID : KEY_OTHER;
    case 8:
        return IS("rudderId") ? KEY_RUDDER_ID : KEY_OTHER;
    case 9:
        return IS("messageId") ? KEY_MESSAGE_ID : KEY_OTHER;
    case 11:
        return IS("anonymousId") ? KEY_ANONYMOUS_ID : KEY_OTHER;
    case 10:
        return IS("receivedAt") ? KEY_RECEIVED_AT : IS("request_ip") ? KEY_REQUEST_IP : KEY_OTHER;
    default:
        return KEY_OTHER;
    }
#undef IS
}

static const char *scan_value(IngestScan *s, const char *p, int depth, Role role);

static const char *scan_array(IngestScan *s, const char *p, int depth, Role elems)
{
    p = skip_ws(p + 1, s->end);
    if (p < s->end && *p == ']')
        return p + 1;
    for (;;) {
        p = scan_value(s, skip_ws(p, s->end), depth + 1, elems);
        if (p == NULL)
            return NULL;
        p = skip_ws(p, s->end);
        if (p >= s->end)
            return NULL;
        if (*p == ']')
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

static const char *scan_object(IngestScan *s, const char *p, int depth, Role role)
{
    int first = s->nm;
    p = skip_ws(p + 1, s->end);
    if (p < s->end && *p == '}')
        goto done;
    for (;;) {
        if (p >= s->end || *p != '"')
            return NULL;
        const char *kstart = p;
        p = scan_string(s, p);
        if (p == NULL)
            return NULL;
        int key = key_id(kstart + 1, (size_t)(p - kstart - 2), role);
        p = skip_ws(p, s->end);
        if (p >= s->end || *p != ':')
            return NULL;
        const char *val = skip_ws(p + 1, s->end);
        if (role == ROLE_ROOT && key == KEY_BATCH) {
            /* json-c keeps the last of duplicate keys; so do we */
            s->nm = 0;
            s->nev = 0;
            first = 0;
        }
        Role inner = ROLE_PLAIN;
        if (role == ROLE_ROOT && key == KEY_BATCH && val < s->end && *val == '[')
            inner = ROLE_EVENT; /* the elements of batch are the events */
        p = val < s->end && *val == '[' ? scan_array(s, val, depth + 1, inner)
                                        : scan_value(s, val, depth + 1, ROLE_PLAIN);
        if (p == NULL)
            return NULL;
        if (role == ROLE_EVENT) {
            if (s->nm == s->capm) {
                s->capm = s->capm ? s->capm * 2 : 32;
                s->m = xrealloc(s->m, sizeof(Member) * (size_t)s->capm);
            }
            s->m[s->nm++] = (Member){kstart, p, val, key};
        } else if (role == ROLE_ROOT && key == KEY_SENT_AT) {
            s->sent_at = val;
            s->sent_at_end = p;
        }
        p = skip_ws(p, s->end);
        if (p >= s->end)
            return NULL;
        if (*p == '}')
            break;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1, s->end);
    }
done:
    if (role == ROLE_EVENT) {
        if (s->nev == s->capev) {
            s->capev = s->capev ? s->capev * 2 : 16;
            s->ev = xrealloc(s->ev, sizeof(EventSpan) * (size_t)s->capev);
        }
        s->ev[s->nev++] = (EventSpan){first, s->nm - first};
    }
    return p + 1;
}

static const char *scan_value(IngestScan *s, const char *p, int depth, Role role)
{
    if (depth > SCAN_MAX_DEPTH || p >= s->end)
        return NULL;
    switch (*p) {
    case '"':
        return scan_string(s, p);
    case '{':
        return scan_object(s, p, depth, role);
    case '[':
        return scan_array(s, p, depth, ROLE_PLAIN);
    case 't':
        return s->end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return s->end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return s->end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return scan_number(p, s->end);
    }
}

/* Validates the whole document and records the events' members. */
static bool scan_body(IngestScan *s, const char *body, size_t len, bool batch)
{
    s->end = body + len;
    s->nm = 0;
    s->nev = 0;
    s->sent_at = s->sent_at_end = NULL;
    s->has_nul = false;
    const char *p = skip_ws(body, s->end);
    if (p >= s->end || *p != '{')
        return false;
    p = scan_object(s, p, 1, batch ? ROLE_ROOT : ROLE_EVENT);
    return p != NULL && skip_ws(p, s->end) == s->end;
}

/* ---- Events ------------------------------------------------------------- */

/* Sets b to the identity text of a message field without NUL characters
 * (Postgres text cannot hold them, and RudderStack's sanitising drops them
 * too): strings as they are, numbers as sent (raw, from the member span
 * found by the scan, so big integers are not clamped), booleans as
 * true/false; anything else, and "", is no identity. */
static void identity(json_object *ev, const char *key, const Member *raw, Buf *b)
{
    buf_reset(b);
    buf_append(b, "", 0); /* allocated and terminated even when empty */
    json_object *v = NULL;
    if (!json_object_object_get_ex(ev, key, &v) || v == NULL)
        return;
    if (json_object_is_type(v, json_type_string)) {
        const char *str = json_object_get_string(v);
        size_t n = (size_t)json_object_get_string_len(v);
        const char *nul;
        while ((nul = memchr(str, '\0', n)) != NULL) {
            buf_append(b, str, (size_t)(nul - str));
            n -= (size_t)(nul - str) + 1;
            str = nul + 1;
        }
        buf_append(b, str, n);
        return;
    }
    if ((json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) &&
        raw != NULL) {
        const char *end = raw->end;
        while (end > raw->val &&
               (end[-1] == ' ' || end[-1] == '\n' || end[-1] == '\r' || end[-1] == '\t'))
            end--;
        buf_append(b, raw->val, (size_t)(end - raw->val));
        return;
    }
    buf_puts(b, jsonu_id_text(v));
}

/* Appends JSON text [p, p+n) for COPY. With strip_nul, \u0000 escapes are
 * left out: Postgres cannot turn them into text, so its JSON functions
 * fail on the whole document (RudderStack removes them before storing
 * too). A backslash always pairs with the next character, so "\\u0000"
 * (an escaped backslash, then text) is not one. */
static void put_json(Buf *rows, const char *p, size_t n, bool strip_nul)
{
    if (!strip_nul) {
        buf_put_copy_text(rows, p, n);
        return;
    }
    const char *end = p + n, *run = p;
    while (p < end) {
        if (*p != '\\') {
            p++;
            continue;
        }
        if (end - p >= 6 && memcmp(p, "\\u0000", 6) == 0) {
            buf_put_copy_text(rows, run, (size_t)(p - run));
            p += 6;
            run = p;
            continue;
        }
        p += 2;
    }
    buf_put_copy_text(rows, run, (size_t)(end - run));
}

static void put_member(Buf *rows, bool *first, const char *p, size_t n, bool strip_nul)
{
    if (!*first)
        buf_putc(rows, ',');
    *first = false;
    put_json(rows, p, n, strip_nul);
}

/* A messageId that is missing, null or "" is replaced by a fresh one. */
static bool message_id_missing(json_object *ev)
{
    json_object *mid = NULL;
    return !json_object_object_get_ex(ev, "messageId", &mid) || mid == NULL ||
           (json_object_is_type(mid, json_type_string) && json_object_get_string_len(mid) == 0);
}

/* Appends one event as a row: the client's members as sent, minus the ones
 * the gateway sets, then the enrichment. Returns false if the event has no
 * identity. */
static bool add_event(IngestScan *s, const EventSpan *es, json_object *ev, const char *type,
                      bool add_sent_at, const IngestCtx *ctx, IngestOut *out)
{
    const Member *uid_m = NULL, *aid_m = NULL;
    for (int i = es->first; i < es->first + es->n; i++) {
        if (s->m[i].key == KEY_USER_ID)
            uid_m = &s->m[i]; /* the last of duplicates, as in the tree */
        else if (s->m[i].key == KEY_ANONYMOUS_ID)
            aid_m = &s->m[i];
    }
    identity(ev, "userId", uid_m, &s->uid);
    identity(ev, "anonymousId", aid_m, &s->aid);
    if (s->uid.len == 0 && s->aid.len == 0)
        return false;
    bool new_mid = message_id_missing(ev);
    bool has_sent_at = false;

    /* Ordering key: anonymousId, else userId (DESIGN §4), cut on a
     * character boundary so the stored text stays valid UTF-8. */
    const Buf *kb = s->aid.len ? &s->aid : &s->uid;
    size_t klen = utf8_cut(kb->data, kb->len, INGEST_MAX_USER_KEY);
    buf_reset(&s->key);
    buf_append(&s->key, kb->data, klen);
    int part = jobq_partition(ctx->workspace_id, s->key.data, ctx->partitions);
    Buf *rows = &out->rows;
    buf_printf(rows, "%d\t", part);
    jobq_copy_text(rows, ctx->workspace_id);
    buf_putc(rows, '\t');
    jobq_copy_text(rows, ctx->source_id);
    buf_puts(rows, "\t\t");
    buf_put_copy_text(rows, s->key.data, s->key.len);
    buf_putc(rows, '\t');

    buf_putc(rows, '{');
    bool first = true;
    for (int i = es->first; i < es->first + es->n; i++) {
        const Member *m = &s->m[i];
        switch (m->key) {
        case KEY_TYPE:
            if (type != NULL)
                continue;
            break;
        case KEY_MESSAGE_ID:
            if (new_mid)
                continue;
            break;
        case KEY_SENT_AT:
            has_sent_at = true;
            break;
        case KEY_RECEIVED_AT:
        case KEY_REQUEST_IP:
        case KEY_RUDDER_ID:
            continue;
        default:
            break;
        }
        put_member(rows, &first, m->start, (size_t)(m->end - m->start), s->has_nul);
    }
    if (type != NULL) {
        put_member(rows, &first, "\"type\":", 7, false);
        jsonu_put_string(rows, type);
    }
    if (new_mid) {
        char id[UUID_STR_LEN];
        ids_uuid_v4(id);
        put_member(rows, &first, "\"messageId\":\"", 13, false);
        buf_append(rows, id, UUID_STR_LEN - 1);
        buf_putc(rows, '"');
    }
    if (add_sent_at && !has_sent_at && s->sent_at != NULL) {
        put_member(rows, &first, "\"sentAt\":", 9, false);
        put_json(rows, s->sent_at, (size_t)(s->sent_at_end - s->sent_at), s->has_nul);
    }
    put_member(rows, &first, "\"receivedAt\":", 13, false);
    jsonu_put_string(rows, ctx->received_at);
    buf_puts(rows, ",\"request_ip\":");
    /* the request ip is validated by the HTTP layer; escaped anyway */
    Buf *tmp = &s->key;
    buf_reset(tmp);
    jsonu_put_string(tmp, ctx->request_ip);
    buf_put_copy_text(rows, tmp->data, tmp->len);
    char rid[UUID_STR_LEN];
    ids_rudder_id(s->uid.data, s->aid.data, rid);
    buf_puts(rows, ",\"rudderId\":\"");
    buf_append(rows, rid, UUID_STR_LEN - 1);
    buf_puts(rows, "\"}\n");

    if (out->nevents == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 16;
        out->parts = xrealloc(out->parts, sizeof(int) * (size_t)out->cap);
    }
    out->parts[out->nevents++] = part;
    return true;
}

int ingest_parse(IngestKind kind, const char *body, size_t len, const IngestCtx *ctx,
                 IngestOut *out, const char **msg)
{
    size_t rows_mark = out->rows.len;
    int events_mark = out->nevents;
    int status = 200;
    bool batch_kind = kind == INGEST_BATCH || kind == INGEST_IMPORT;
    if (out->scan == NULL) {
        out->scan = xcalloc(1, sizeof(IngestScan));
        buf_init(&out->scan->key);
        buf_init(&out->scan->uid);
        buf_init(&out->scan->aid);
    }
    IngestScan *s = out->scan;
    json_object *root = NULL;
    if (len > INT32_MAX) {
        *msg = INGEST_MSG_INVALID_JSON;
        status = 400;
        goto out;
    }
    json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    /* trailing garbage after the document is invalid too */
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    while (root != NULL && used < len &&
           (body[used] == ' ' || body[used] == '\n' || body[used] == '\r' || body[used] == '\t'))
        used++;
    if (root == NULL || jerr != json_tokener_success || used != len ||
        !json_object_is_type(root, json_type_object) || !scan_body(s, body, len, batch_kind)) {
        *msg = INGEST_MSG_INVALID_JSON;
        status = 400;
        goto out;
    }
    if (batch_kind) {
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
        for (size_t i = 0; i < n; i++) {
            json_object *ev = json_object_array_get_idx(batch, i);
            if (ev == NULL || !json_object_is_type(ev, json_type_object)) {
                *msg = INGEST_MSG_INVALID_JSON;
                status = 400;
                goto out;
            }
        }
        /* the scan saw the same array (one span per element, all objects) */
        if ((size_t)s->nev != n) {
            *msg = INGEST_MSG_INVALID_JSON;
            status = 400;
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            json_object *ev = json_object_array_get_idx(batch, i);
            if (!add_event(s, &s->ev[i], ev, NULL, true, ctx, out)) {
                *msg = INGEST_MSG_NO_IDENTITY;
                status = 400;
                goto out;
            }
        }
    } else if (s->nev != 1 ||
               !add_event(s, &s->ev[0], root, ingest_kind_type(kind), false, ctx, out)) {
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
