#include "router/delivery.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "common/httpc.h"
#include "common/jsonu.h"
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

static const char *value_text(json_object *v)
{
    if (json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return jsonu_to_string(v, NULL);
}

static int nonempty(json_object *o)
{
    if (o == NULL || json_object_is_type(o, json_type_null))
        return 0;
    if (json_object_is_type(o, json_type_object))
        return json_object_object_length(o) > 0;
    if (json_object_is_type(o, json_type_array))
        return json_object_array_length(o) > 0;
    if (json_object_is_type(o, json_type_string))
        return json_object_get_string_len(o) > 0;
    return 1;
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

int delivery_build(Delivery *d, const char *payload, Err *err)
{
    memset(d, 0, sizeof(*d));
    buf_init(&d->url);
    buf_init(&d->body);
    json_object *root = json_tokener_parse(payload);
    int rc = 0;
    if (root == NULL || !json_object_is_type(root, json_type_object)) {
        rc = err_set(err, ERR_INVALID, "delivery payload is not a JSON object");
        goto out;
    }
    const char *endpoint = jsonu_str_ci(root, "endpoint", "");
    if (endpoint[0] == '\0') {
        rc = err_set(err, ERR_INVALID, "delivery payload has no endpoint");
        goto out;
    }
    const char *method = jsonu_str_ci(root, "method", "POST");
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", NULL};
    int ok = 0;
    for (int i = 0; methods[i]; i++)
        if (strcasecmp(method, methods[i]) == 0) {
            strcpy(d->method, methods[i]);
            ok = 1;
        }
    if (!ok) {
        rc = err_set(err, ERR_INVALID, "delivery payload has unsupported method \"%s\"", method);
        goto out;
    }
    buf_puts(&d->url, endpoint);
    json_object *params = jsonu_get_ci(root, "params");
    if (params && json_object_is_type(params, json_type_object) &&
        json_object_object_length(params) > 0) {
        char sep = strchr(endpoint, '?') ? '&' : '?';
        json_object_object_foreach(params, k, v)
        {
            if (v == NULL || json_object_is_type(v, json_type_null))
                continue;
            buf_putc(&d->url, sep);
            sep = '&';
            httpc_url_encode(&d->url, k, strlen(k));
            buf_putc(&d->url, '=');
            const char *t = value_text(v);
            httpc_url_encode(&d->url, t, strlen(t));
        }
    }
    json_object *headers = jsonu_get_ci(root, "headers");
    if (headers && json_object_is_type(headers, json_type_object)) {
        json_object_object_foreach(headers, k, v)
        {
            if (v == NULL || json_object_is_type(v, json_type_null) || strchr(k, '\n') ||
                strchr(k, ':'))
                continue;
            const char *t = value_text(v);
            if (strchr(t, '\n') || strchr(t, '\r'))
                continue;
            add_header(d, k, t);
        }
    }
    json_object *body = jsonu_get_ci(root, "body");
    const char *ctype = NULL;
    if (strcmp(d->method, "GET") != 0 && body && json_object_is_type(body, json_type_object)) {
        json_object *v;
        if (nonempty(v = jsonu_get_ci(body, "JSON"))) {
            buf_puts(&d->body, jsonu_to_string(v, NULL));
            ctype = "application/json";
        } else if (nonempty(v = jsonu_get_ci(body, "JSON_ARRAY"))) {
            json_object *batch = jsonu_get_ci(v, "batch");
            buf_puts(&d->body, batch ? value_text(batch) : jsonu_to_string(v, NULL));
            ctype = "application/json";
        } else if (nonempty(v = jsonu_get_ci(body, "XML"))) {
            json_object *x = jsonu_get_ci(v, "payload");
            buf_puts(&d->body, x ? value_text(x) : "");
            ctype = "application/xml";
        } else if (nonempty(v = jsonu_get_ci(body, "FORM"))) {
            int first = 1;
            json_object_object_foreach(v, k, fv)
            {
                if (!first)
                    buf_putc(&d->body, '&');
                first = 0;
                httpc_url_encode(&d->body, k, strlen(k));
                buf_putc(&d->body, '=');
                const char *t = fv ? value_text(fv) : "";
                httpc_url_encode(&d->body, t, strlen(t));
            }
            ctype = "application/x-www-form-urlencoded";
        } else if (nonempty(v = jsonu_get_ci(body, "GZIP"))) {
            json_object *g = jsonu_get_ci(v, "payload");
            const char *t = g ? value_text(g) : "";
            if (gzip_into(&d->body, t, strlen(t)) < 0) {
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
    json_object_put(root);
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
