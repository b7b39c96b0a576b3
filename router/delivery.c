#include "router/delivery.h"

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
            const char *t = value_text(x, &tmp);
            httpc_url_encode(&d->url, t, tmp.len);
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
            int first = 1;
            while (jscan_next_member(&it, &k, &x)) {
                if (!first)
                    buf_putc(&d->body, '&');
                first = 0;
                buf_reset(&tmp2);
                jscan_string((JSpan){k.p - 1, k.n + 2}, &tmp2);
                httpc_url_encode(&d->body, tmp2.data ? tmp2.data : "", tmp2.len);
                buf_putc(&d->body, '=');
                const char *t = value_text(x, &tmp);
                httpc_url_encode(&d->body, t, tmp.len);
            }
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
