#include "router/delivery.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "common/httpc.h"
#include "common/jscan.h"
#include "common/xalloc.h"

static void add_header(Delivery *d, const char *name, const char *value)
{
    d->headers = xrealloc(d->headers, sizeof(char *) * (size_t)(d->nheaders + 2));
    d->headers[d->nheaders++] = xasprintf("%s: %s", name, value);
    d->headers[d->nheaders] = NULL;
}

static int has_header(const Delivery *d, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < d->nheaders; i++)
        if (strncasecmp(d->headers[i], name, n) == 0 && d->headers[i][n] == ':')
            return 1;
    return 0;
}

/* Text of a JSON value as a header, parameter or form value: strings
 * decoded, anything else as its JSON text. tmp is reset and used as storage. */
static const char *value_text(JSpan v, Buf *tmp)
{
    buf_reset(tmp);
    if (jscan_type(v) == 's') {
        if (!jscan_string(v, tmp))
            buf_append(tmp, v.p, v.n);
    } else {
        buf_append(tmp, v.p, v.n);
    }
    if (tmp->data == NULL)
        buf_puts(tmp, "");
    return tmp->data;
}

/* A JSON number as Go's fmt.Sprint prints the float64 encoding/json decodes
 * it into: the shortest digits that read back as the same double, in %e
 * form (two exponent digits at least) when the decimal exponent is below -4
 * or at least 6 (1e+06, 1.7e+12, 1e-05), else plain (123456, 0.0001). */
static void go_float(Buf *out, JSpan v)
{
    char text[64];
    snprintf(text, sizeof text, "%.*s", (int)(v.n < 63 ? v.n : 63), v.p);
    double x = strtod(text, NULL);
    if (isinf(x)) { /* out of range: Go's decoder refuses it; keep the text */
        buf_append(out, v.p, v.n);
        return;
    }
    char e[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, x);
        if (strtod(e, NULL) == x)
            break;
    }
    /* e is [-]d[.ddd]e[+-]XX: split into sign, digits and exponent */
    const char *p = e;
    bool neg = *p == '-';
    if (neg)
        p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int exp = atoi(p + 1);
    if (neg)
        buf_putc(out, '-');
    if (x == 0) {
        buf_putc(out, '0');
        return;
    }
    if (exp < -4 || exp >= 6) {
        buf_putc(out, digits[0]);
        if (nd > 1) {
            buf_putc(out, '.');
            buf_puts(out, digits + 1);
        }
        buf_printf(out, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        buf_puts(out, "0.");
        for (int i = -1; i > exp; i--)
            buf_putc(out, '0');
        buf_puts(out, digits);
    } else {
        for (int i = 0; i <= exp; i++)
            buf_putc(out, i < nd ? digits[i] : '0');
        if (nd > exp + 1) {
            buf_putc(out, '.');
            buf_puts(out, digits + exp + 1);
        }
    }
}

typedef struct GoMember {
    char *key;
    JSpan val;
} GoMember;

/* The members of the object it iterates, keys decoded, in byte order of
 * the keys; equal keys keep their order in the text (the last one is what
 * encoding/json keeps). Caller frees with members_free. */
static GoMember *members_sorted(JIter *it, size_t *count)
{
    GoMember *m = NULL;
    size_t n = 0;
    JSpan k, x;
    while (jscan_next_member(it, &k, &x)) {
        Buf kb;
        buf_init(&kb);
        if (!jscan_string((JSpan){k.p - 1, k.n + 2}, &kb))
            buf_append(&kb, k.p, k.n);
        if (kb.data == NULL)
            buf_puts(&kb, "");
        m = xrealloc(m, sizeof(*m) * (n + 1));
        m[n].key = buf_take(&kb, NULL);
        m[n].val = x;
        n++;
    }
    for (size_t i = 1; i < n; i++) /* insertion sort: stable, objects are small */
        for (size_t j = i; j > 0 && strcmp(m[j - 1].key, m[j].key) > 0; j--) {
            GoMember t = m[j];
            m[j] = m[j - 1];
            m[j - 1] = t;
        }
    *count = n;
    return m;
}

static void members_free(GoMember *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(m[i].key);
    free(m);
}

/* A JSON value as Go's fmt.Sprint prints what encoding/json decodes it
 * into (interface{}), which is how RudderStack's router encodes FORM
 * values: strings as their text, numbers as float64 (go_float), true,
 * false, <nil>, arrays as [a b c], objects as map[k:v ...] in key order. */
static void go_sprint(Buf *out, JSpan v)
{
    JIter it;
    JSpan x;
    switch (jscan_type(v)) {
    case 's':
        if (!jscan_string(v, out))
            buf_append(out, v.p, v.n);
        return;
    case 'n':
        go_float(out, v);
        return;
    case 't':
        buf_puts(out, "true");
        return;
    case 'f':
        buf_puts(out, "false");
        return;
    case 'z':
        buf_puts(out, "<nil>");
        return;
    case 'a': {
        buf_putc(out, '[');
        bool first = true;
        if (jscan_array(v, &it))
            while (jscan_next_element(&it, &x)) {
                if (!first)
                    buf_putc(out, ' ');
                first = false;
                go_sprint(out, x);
            }
        buf_putc(out, ']');
        return;
    }
    case 'o': {
        size_t n = 0;
        GoMember *m = jscan_object(v, &it) ? members_sorted(&it, &n) : NULL;
        buf_puts(out, "map[");
        bool first = true;
        for (size_t i = 0; i < n; i++) {
            /* a key repeated in the text: encoding/json keeps the last */
            if (i + 1 < n && strcmp(m[i].key, m[i + 1].key) == 0)
                continue;
            if (!first)
                buf_putc(out, ' ');
            first = false;
            buf_puts(out, m[i].key);
            buf_putc(out, ':');
            go_sprint(out, m[i].val);
        }
        buf_putc(out, ']');
        members_free(m, n);
        return;
    }
    default:
        buf_append(out, v.p, v.n);
    }
}

/* Appends s encoded as Go's url.QueryEscape does (form values): space as
 * '+', everything but letters, digits and -_.~ as %XX. */
static void form_escape(Buf *out, const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == ' ') {
            httpc_url_encode(out, s + start, i - start);
            if (i < n)
                buf_putc(out, '+');
            start = i + 1;
        }
    }
}

/* A FORM body as RudderStack's router writes it (url.Values: each value
 * fmt.Sprint'ed, keys in byte order, a repeated key's last value,
 * QueryEscape'd), so an official transform's ["<json>"] arrives as [<json>]. */
static void form_body(Buf *out, JIter *it)
{
    size_t n = 0;
    GoMember *m = members_sorted(it, &n);
    Buf val;
    buf_init(&val);
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(m[i].key, m[i + 1].key) == 0)
            continue;
        if (!first)
            buf_putc(out, '&');
        first = false;
        form_escape(out, m[i].key, strlen(m[i].key));
        buf_putc(out, '=');
        buf_reset(&val);
        go_sprint(&val, m[i].val);
        form_escape(out, val.data ? val.data : "", val.len);
    }
    buf_deinit(&val);
    members_free(m, n);
}

static int gzip_into(Buf *out, const char *in, size_t len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    buf_reserve(out, deflateBound(&z, len) + 16);
    z.next_in = (unsigned char *)in;
    z.avail_in = (uInt)len;
    z.next_out = (unsigned char *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len - 1);
    int rc = deflate(&z, Z_FINISH);
    out->len = out->cap - 1 - z.avail_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

/* The payload is picked apart with jscan, not parsed into a tree: the JSON
 * body is forwarded as the exact text the transformer produced. */
int delivery_build(Delivery *d, const char *payload, Err *err)
{
    memset(d, 0, sizeof(*d));
    buf_init(&d->url);
    buf_init(&d->body);
    Buf tmp, tmp2;
    buf_init(&tmp);
    buf_init(&tmp2);
    int rc = 0;
    JSpan root = jscan_doc(payload, strlen(payload));
    JSpan v;
    if (jscan_type(root) != 'o') {
        rc = err_set(err, ERR_INVALID, "delivery payload is not a JSON object");
        goto out;
    }
    if (!jscan_get(root, "endpoint", &v) || jscan_type(v) != 's' || !jscan_string(v, &d->url) ||
        d->url.len == 0) {
        rc = err_set(err, ERR_INVALID, "delivery payload has no endpoint");
        goto out;
    }
    const char *method = "POST";
    if (jscan_get(root, "method", &v) && jscan_type(v) == 's')
        method = value_text(v, &tmp);
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", NULL};
    int ok = 0;
    for (int i = 0; methods[i]; i++)
        if (strcasecmp(method, methods[i]) == 0) {
            strcpy(d->method, methods[i]);
            ok = 1;
        }
    if (!ok) {
        rc = err_set(err, ERR_INVALID, "delivery payload has unsupported method \"%.40s\"", method);
        goto out;
    }
    JIter it;
    JSpan k, x;
    if (jscan_get(root, "params", &v) && jscan_object(v, &it)) {
        char sep = memchr(d->url.data, '?', d->url.len) ? '&' : '?';
        while (jscan_next_member(&it, &k, &x)) {
            if (jscan_type(x) == 'z')
                continue;
            buf_putc(&d->url, sep);
            sep = '&';
            buf_reset(&tmp2);
            jscan_string((JSpan){k.p - 1, k.n + 2}, &tmp2);
            httpc_url_encode(&d->url, tmp2.data ? tmp2.data : "", tmp2.len);
            buf_putc(&d->url, '=');
            /* as RudderStack's router: objects as JSON, the rest fmt.Sprint'ed */
            buf_reset(&tmp);
            if (jscan_type(x) == 'o')
                buf_append(&tmp, x.p, x.n);
            else
                go_sprint(&tmp, x);
            httpc_url_encode(&d->url, tmp.data ? tmp.data : "", tmp.len);
        }
    }
    if (jscan_get(root, "headers", &v) && jscan_object(v, &it)) {
        while (jscan_next_member(&it, &k, &x)) {
            if (jscan_type(x) == 'z' || memchr(k.p, ':', k.n) || memchr(k.p, '\n', k.n) ||
                memchr(k.p, '\\', k.n))
                continue;
            const char *t = value_text(x, &tmp);
            if (strchr(t, '\n') || strchr(t, '\r'))
                continue;
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)k.n, k.p);
            add_header(d, name, t);
        }
    }
    const char *ctype = NULL;
    JSpan body;
    if (strcmp(d->method, "GET") != 0 && jscan_get(root, "body", &body) &&
        jscan_type(body) == 'o') {
        if (jscan_get(body, "JSON", &v) && !jscan_is_empty(v)) {
            buf_append(&d->body, v.p, v.n);
            ctype = "application/json";
        } else if (jscan_get(body, "JSON_ARRAY", &v) && !jscan_is_empty(v)) {
            JSpan b;
            if (jscan_get(v, "batch", &b))
                value_text(b, &d->body);
            else
                buf_append(&d->body, v.p, v.n);
            ctype = "application/json";
        } else if (jscan_get(body, "XML", &v) && !jscan_is_empty(v)) {
            JSpan b;
            if (jscan_get(v, "payload", &b))
                value_text(b, &d->body);
            ctype = "application/xml";
        } else if (jscan_get(body, "FORM", &v) && !jscan_is_empty(v) && jscan_object(v, &it)) {
            form_body(&d->body, &it);
            ctype = "application/x-www-form-urlencoded";
        } else if (jscan_get(body, "GZIP", &v) && !jscan_is_empty(v)) {
            JSpan b;
            const char *t = "";
            size_t tl = 0;
            if (jscan_get(v, "payload", &b)) {
                t = value_text(b, &tmp);
                tl = tmp.len;
            }
            if (gzip_into(&d->body, t, tl) < 0) {
                rc = err_set(err, ERR_INVALID, "could not gzip the delivery body");
                goto out;
            }
            ctype = "application/json";
            if (!has_header(d, "Content-Encoding"))
                add_header(d, "Content-Encoding", "gzip");
        }
        d->has_body = ctype != NULL;
    }
    if (ctype && !has_header(d, "Content-Type"))
        add_header(d, "Content-Type", ctype);
    if (!has_header(d, "User-Agent"))
        add_header(d, "User-Agent", "pintle-router/0.1");
out:
    buf_deinit(&tmp);
    buf_deinit(&tmp2);
    return rc;
}

void delivery_deinit(Delivery *d)
{
    buf_deinit(&d->url);
    buf_deinit(&d->body);
    for (int i = 0; i < d->nheaders; i++)
        free(d->headers[i]);
    free(d->headers);
    d->headers = NULL;
    d->nheaders = 0;
}

DeliveryOutcome delivery_classify(long status)
{
    if (status >= 200 && status < 300)
        return DELIVERY_OK;
    if (status == 408 || status == 429)
        return DELIVERY_RETRY;
    if (status >= 400 && status < 500)
        return DELIVERY_ABORT;
    return DELIVERY_RETRY;
}
