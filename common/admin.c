#include "common/admin.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

struct Admin {
    struct evhttp *http;
    Metrics *m;
    bool (*ready)(void *, char *, size_t);
    void *arg;
};

static void reply(struct evhttp_request *req, int code, const char *ctype, const char *body,
                  size_t len)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable", out);
    evbuffer_free(out);
}

static void handle(struct evhttp_request *req, void *arg)
{
    Admin *a = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path && strcmp(path, "/metrics") == 0) {
        Buf b;
        buf_init(&b);
        metrics_render(a->m, &b);
        reply(req, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
        buf_deinit(&b);
    } else if (path && strcmp(path, "/health") == 0) {
        char detail[512] = "{}";
        bool ok = a->ready(a->arg, detail, sizeof detail);
        reply(req, ok ? 200 : 503, "application/json", detail, strlen(detail));
    } else if (path && strcmp(path, "/health/live") == 0) {
        reply(req, 200, "text/plain", "ok", 2);
    } else {
        reply(req, 404, "text/plain", "not found", 9);
    }
}

Admin *admin_open(struct event_base *base, const char *address, int port, Metrics *m,
                  bool (*ready)(void *, char *, size_t), void *arg, Err *err)
{
    Admin *a = xcalloc(1, sizeof(*a));
    a->m = m;
    a->ready = ready;
    a->arg = arg;
    if (port == 0)
        return a;
    a->http = evhttp_new(base);
    if (evhttp_bind_socket(a->http, address, (ev_uint16_t)port) != 0) {
        err_set(err, ERR_IO, "could not listen on %s:%d for /health and /metrics", address, port);
        evhttp_free(a->http);
        free(a);
        return NULL;
    }
    evhttp_set_gencb(a->http, handle, a);
    return a;
}

void admin_close(Admin *a)
{
    if (a == NULL)
        return;
    if (a->http)
        evhttp_free(a->http);
    free(a);
}
