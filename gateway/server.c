#include "gateway/server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <zlib.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "gateway/conns.h"
#include "gateway/ingest.h"

#define PINTLE_VERSION "0.1.0"

typedef struct Bucket {
    double tokens;
    struct timeval last;
} Bucket;

struct Server {
    struct event_base *base;
    const Config *cfg;
    Writer *writer;
    WsWatcher *ws;
    Metrics *metrics;
    struct evhttp *http;
    struct evconnlistener *listener;
    struct evhttp_bound_socket *bound;
    Conns *conns;
    int port;
    bool draining;
    int open_requests; /* accepted for storage and not yet answered */
    void (*drained)(void *);
    void *drained_arg;
    struct event *drain_check; /* while draining: requests still arriving */
    IngestOut scratch;
    Buf body;
    HMap buckets; /* workspace id -> Bucket */
    HMap codes;   /* "code source_id" -> CodeSeries */
    MetricsShare *share; /* borrowed; NULL with one worker */
    int worker;
    MetricSeries *m_latency;
};

/* The requests and events counters of one (status code, source). */
typedef struct CodeSeries {
    MetricSeries *requests, *events;
} CodeSeries;

typedef struct Pending {
    Server *s;
    struct evhttp_request *req;
    bool pixel;
    int events;
    struct timeval start;
    char source_id[128];
} Pending;

static const unsigned char gif_1x1[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff, 0xff,
    0xff, 0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

static const char *reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* Counts one answered request and its events (as parsed; 0 when the body
 * was not read) by status code and source ("" before the write key named
 * one; NULL: not counted, for /health, /metrics and /version, whose
 * scrapes would drown the traffic). Never by user. */
static void count_code(Server *s, int code, const char *source_id, int events)
{
    if (code < 100 || code >= 600 || source_id == NULL)
        return;
    char key[160];
    snprintf(key, sizeof key, "%d %s", code, source_id);
    CodeSeries *c = hmap_get(&s->codes, key);
    if (c == NULL) {
        char src[160], labels[200];
        metrics_format_label(src, sizeof src, "source", source_id);
        snprintf(labels, sizeof labels, "code=\"%d\",%s", code, src);
        c = xmalloc(sizeof *c);
        c->requests = metrics_series(s->metrics, "pintle_gateway_requests_total",
                                     "HTTP requests answered, by status code and source",
                                     METRIC_COUNTER, labels);
        c->events = metrics_series(s->metrics, "pintle_gateway_events_total",
                                   "Events in the ingestion requests answered (as parsed; 0 for"
                                   " a body never read), by status code and source",
                                   METRIC_COUNTER, labels);
        hmap_put(&s->codes, key, c);
    }
    metrics_inc(c->requests, 1);
    metrics_inc(c->events, events);
}

static void reply_counted(Server *s, struct evhttp_request *req, int code, const char *ctype,
                          const void *body, size_t len, const char *source_id, int events)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Content-Type", ctype);
    /* draining: this connection's last answer (a proxy sends the next
     * request elsewhere instead of getting "shutting down") */
    if (s->draining)
        evhttp_add_header(headers, "Connection", "close");
    conns_reply_started(s->conns, req);
    evhttp_send_reply(req, code, reason(code), out);
    evbuffer_free(out);
    count_code(s, code, source_id, events);
}

static void reply_body(Server *s, struct evhttp_request *req, int code, const char *ctype,
                       const void *body, size_t len)
{
    reply_counted(s, req, code, ctype, body, len, "", 0);
}

static void reply_text(Server *s, struct evhttp_request *req, int code, const char *text)
{
    reply_body(s, req, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* An ingestion request's answer once its source is known. */
static void reply_source(Server *s, struct evhttp_request *req, int code, const char *text,
                         const char *source_id, int events)
{
    reply_counted(s, req, code, "text/plain; charset=utf-8", text, strlen(text), source_id, events);
}

/* Drained once no request is open and none is still arriving: a request
 * whose first bytes came before the drain is stored like the others (the
 * writer refuses what comes after it drained: "shutting down"). A
 * connection that closes mid-request is seen by the drain_check timer. */
static void maybe_drained(Server *s)
{
    if (s->draining && s->open_requests == 0 && s->drained && conns_reading(s->conns) == 0) {
        void (*cb)(void *) = s->drained;
        s->drained = NULL;
        if (s->drain_check != NULL)
            event_del(s->drain_check);
        cb(s->drained_arg);
    }
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg)
{
    maybe_drained(arg);
}

static void on_stored(void *arg, int status, const char *msg)
{
    Pending *p = arg;
    Server *s = p->s;
    struct timeval now;
    gettimeofday(&now, NULL);
    metrics_observe(s->m_latency, (double)(now.tv_sec - p->start.tv_sec) +
                                      (double)(now.tv_usec - p->start.tv_usec) / 1e6);
    if (status == 200 && p->pixel)
        reply_counted(s, p->req, 200, "image/gif", gif_1x1, sizeof gif_1x1, p->source_id,
                      p->events);
    else
        reply_source(s, p->req, status, msg, p->source_id, p->events);
    free(p);
    s->open_requests--;
    maybe_drained(s);
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* The write key is the Basic-auth user name; the password is ignored. */
static bool basic_auth_user(const char *header, char *out, size_t outsz)
{
    if (header == NULL || strncasecmp(header, "Basic ", 6) != 0)
        return false;
    const char *p = header + 6;
    while (*p == ' ')
        p++;
    size_t o = 0;
    int bits = 0;
    unsigned acc = 0;
    for (; *p && *p != '='; p++) {
        int v = b64val((unsigned char)*p);
        if (v < 0)
            return false;
        acc = ((acc << 6) | (unsigned)v) & 0xffffffu;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char c = (char)((acc >> bits) & 0xff);
            if (c == ':')
                break;
            if (o + 1 >= outsz)
                return false;
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return o > 0;
}

/* Inflates a gzip body into s->body; returns 0, 413 when over the limit, or 400. */
static int gunzip(Server *s, const unsigned char *in, size_t len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return 400;
    buf_reset(&s->body);
    z.next_in = (unsigned char *)in;
    z.avail_in = (uInt)len;
    size_t limit = (size_t)s->cfg->gateway.max_body_bytes;
    int rc;
    do {
        buf_reserve(&s->body, 65536);
        z.next_out = (unsigned char *)s->body.data + s->body.len;
        z.avail_out = (uInt)(s->body.cap - s->body.len - 1);
        rc = inflate(&z, Z_NO_FLUSH);
        s->body.len = s->body.cap - 1 - z.avail_out;
        if (s->body.len > limit) {
            inflateEnd(&z);
            return 413;
        }
        if (rc == Z_BUF_ERROR && z.avail_in == 0)
            break;
    } while (rc == Z_OK);
    inflateEnd(&z);
    if (rc != Z_STREAM_END)
        return 400;
    s->body.data[s->body.len] = '\0';
    return 0;
}

static bool rate_limited(Server *s, const char *workspace_id, int nevents)
{
    int rate = s->cfg->gateway.rate_limit_events_per_s;
    if (rate <= 0)
        return false;
    double burst = s->cfg->gateway.rate_limit_burst > 0 ? s->cfg->gateway.rate_limit_burst : rate;
    Bucket *b = hmap_get(&s->buckets, workspace_id);
    struct timeval now;
    gettimeofday(&now, NULL);
    if (b == NULL) {
        b = xcalloc(1, sizeof(*b));
        b->tokens = burst;
        b->last = now;
        hmap_put(&s->buckets, workspace_id, b);
    }
    double dt =
        (double)(now.tv_sec - b->last.tv_sec) + (double)(now.tv_usec - b->last.tv_usec) / 1e6;
    b->last = now;
    b->tokens += dt * rate;
    if (b->tokens > burst)
        b->tokens = burst;
    if (b->tokens < nevents)
        return true;
    b->tokens -= nevents;
    return false;
}

/* The client's address for request_ip: the first X-Forwarded-For element
 * when it is an IP address (optionally with a port, "[v6]:port" or
 * "v4:port"), in canonical form; else the peer's address. The header is
 * client-controlled, so nothing else of it is ever stored. */
static void client_ip(struct evhttp_request *req, char *out, size_t outsz)
{
    const char *xff = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Forwarded-For");
    if (xff != NULL) {
        while (*xff == ' ' || *xff == '\t')
            xff++;
        size_t n = strcspn(xff, ",");
        while (n > 0 && (xff[n - 1] == ' ' || xff[n - 1] == '\t'))
            n--;
        char tmp[INET6_ADDRSTRLEN + 8];
        if (n > 0 && n < sizeof tmp) {
            memcpy(tmp, xff, n);
            tmp[n] = '\0';
            char *host = tmp;
            if (host[0] == '[') {
                char *close = strchr(host, ']');
                if (close != NULL && (close[1] == '\0' || close[1] == ':')) {
                    *close = '\0';
                    host++;
                }
            } else {
                char *colon = strchr(host, ':');
                if (colon != NULL && strchr(colon + 1, ':') == NULL)
                    *colon = '\0'; /* v4:port */
            }
            unsigned char addr[sizeof(struct in6_addr)];
            if (inet_pton(AF_INET, host, addr) == 1 &&
                inet_ntop(AF_INET, addr, out, (socklen_t)outsz) != NULL)
                return;
            if (inet_pton(AF_INET6, host, addr) == 1 &&
                inet_ntop(AF_INET6, addr, out, (socklen_t)outsz) != NULL)
                return;
        }
        log_debug("forwarded_for_ignored", "reason=\"not an IP address\"");
    }
    char *addr = NULL;
    ev_uint16_t port = 0;
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    if (c)
        evhttp_connection_get_peer(c, &addr, &port);
    snprintf(out, outsz, "%s", addr ? addr : "");
}

typedef struct Route {
    const char *path;
    IngestKind kind;
    enum { ROUTE_POST, ROUTE_BEACON, ROUTE_PIXEL } how;
} Route;

static const Route routes[] = {
    {"/v1/batch", INGEST_BATCH, ROUTE_POST},
    {"/v1/track", INGEST_TRACK, ROUTE_POST},
    {"/v1/identify", INGEST_IDENTIFY, ROUTE_POST},
    {"/v1/page", INGEST_PAGE, ROUTE_POST},
    {"/v1/screen", INGEST_SCREEN, ROUTE_POST},
    {"/v1/group", INGEST_GROUP, ROUTE_POST},
    {"/v1/alias", INGEST_ALIAS, ROUTE_POST},
    {"/v1/import", INGEST_IMPORT, ROUTE_POST},
    {"/beacon/v1/batch", INGEST_BATCH, ROUTE_BEACON},
    {"/pixel/v1/track", INGEST_TRACK, ROUTE_PIXEL},
    {"/pixel/v1/page", INGEST_PAGE, ROUTE_PIXEL},
};

static void handle_ingest(Server *s, struct evhttp_request *req, const Route *r, const char *query)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool want_get = r->how == ROUTE_PIXEL;
    if ((want_get && cmd != EVHTTP_REQ_GET) || (!want_get && cmd != EVHTTP_REQ_POST)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          want_get ? "GET" : "POST");
        reply_text(s, req, 405, "method not allowed");
        return;
    }
    /* Draining: a request on a connection that was busy when the drain
     * began is still stored (its answer closes the connection, see above);
     * no new connection is accepted, so this ends. */
    char write_key[256] = "";
    if (r->how == ROUTE_POST) {
        const char *auth =
            evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        if (!basic_auth_user(auth, write_key, sizeof write_key)) {
            reply_text(s, req, 401, "failed to read writekey from header");
            return;
        }
    } else {
        struct evkeyvalq params;
        const char *wk = NULL;
        if (query != NULL && evhttp_parse_query_str(query, &params) == 0) {
            wk = evhttp_find_header(&params, "writeKey");
            if (wk != NULL)
                snprintf(write_key, sizeof write_key, "%s", wk);
            evhttp_clear_headers(&params);
        }
        if (write_key[0] == '\0') {
            reply_text(s, req, 401, "failed to read writekey from query params");
            return;
        }
    }
    const WsSource *src = ws_source_by_write_key(ws_watcher_get(s->ws), write_key);
    if (src == NULL) {
        reply_text(s, req, 401, "invalid write key");
        return;
    }
    if (!src->enabled) {
        reply_source(s, req, 404, "source is disabled", src->id, 0);
        return;
    }

    const char *body;
    size_t len;
    char *pixel = NULL;
    if (r->how == ROUTE_PIXEL) {
        pixel = ingest_pixel_body(query);
        body = pixel;
        len = strlen(pixel);
    } else {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        len = evbuffer_get_length(in);
        if (len > (size_t)s->cfg->gateway.max_body_bytes) {
            reply_source(s, req, 413, "request size exceeds max limit", src->id, 0);
            return;
        }
        body = (const char *)evbuffer_pullup(in, -1);
        if (body == NULL)
            body = "";
        const char *enc =
            evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Encoding");
        if (enc != NULL && strcasecmp(enc, "gzip") == 0) {
            int rc = gunzip(s, (const unsigned char *)body, len);
            if (rc == 413) {
                reply_source(s, req, 413, "request size exceeds max limit", src->id, 0);
                return;
            }
            if (rc != 0) {
                reply_source(s, req, 400, "invalid gzip body", src->id, 0);
                return;
            }
            body = s->body.data;
            len = s->body.len;
        }
    }

    char received_at[32];
    ingest_format_now(received_at);
    char ip[INET6_ADDRSTRLEN];
    client_ip(req, ip, sizeof ip);
    IngestCtx ctx = {
        .workspace_id = src->workspace_id,
        .source_id = src->id,
        .received_at = received_at,
        .request_ip = ip,
        .partitions = s->cfg->queue.partitions,
    };
    ingest_out_reset(&s->scratch);
    const char *msg = NULL;
    int status = ingest_parse(r->kind, body, len, &ctx, &s->scratch, &msg);
    free(pixel);
    if (status != 200) {
        reply_source(s, req, status, msg, src->id, s->scratch.nevents);
        return;
    }
    if (rate_limited(s, src->workspace_id, s->scratch.nevents)) {
        reply_source(s, req, 429, "too many requests", src->id, s->scratch.nevents);
        return;
    }
    Pending *p = xmalloc(sizeof(*p));
    p->s = s;
    p->req = req;
    p->pixel = r->how == ROUTE_PIXEL;
    p->events = s->scratch.nevents;
    snprintf(p->source_id, sizeof p->source_id, "%s", src->id);
    gettimeofday(&p->start, NULL);
    const char *why = NULL;
    int refused = writer_submit(s->writer, &s->scratch, on_stored, p, &why);
    if (refused != 0) {
        free(p);
        reply_source(s, req, refused, why, src->id, s->scratch.nevents);
        return;
    }
    s->open_requests++;
}

static void handle_health(Server *s, struct evhttp_request *req)
{
    bool db = writer_db_ready(s->writer);
    bool ready = db && !s->draining;
    char body[160];
    snprintf(body, sizeof body,
             "{\"server\":\"%s\",\"db\":\"%s\",\"acceptingEvents\":%s,\"backlog\":%d}",
             s->draining ? "DRAINING" : "UP", db ? "UP" : "DOWN", ready ? "true" : "false",
             writer_backlog(s->writer));
    reply_counted(s, req, ready ? 200 : 503, "application/json", body, strlen(body), NULL, 0);
}

/* One worker alone: its registry. Several: every worker's latest
 * snapshot (this one's taken now), each series labelled worker="i". */
static void render_metrics(Server *s, Buf *out)
{
    if (s->share == NULL) {
        metrics_render(s->metrics, out);
        return;
    }
    Metrics *all = metrics_create();
    Buf snap;
    buf_init(&snap);
    for (int i = 0; i < mshare_workers(s->share); i++) {
        buf_reset(&snap);
        if (i == s->worker)
            metrics_snapshot(s->metrics, &snap);
        else if (!mshare_read(s->share, i, &snap))
            continue; /* not published yet, or restarting */
        char label[32];
        snprintf(label, sizeof label, "worker=\"%d\"", i);
        if (metrics_merge(all, snap.data ? snap.data : "", snap.len, label) < 0)
            log_warn("worker_metrics_unreadable", "worker=%d bytes=%zu", i, snap.len);
    }
    buf_deinit(&snap);
    metrics_render(all, out);
    metrics_destroy(all);
}

void server_share_metrics(Server *s, MetricsShare *share, int worker)
{
    s->share = share;
    s->worker = worker;
}

static void handle(struct evhttp_request *req, void *arg)
{
    Server *s = arg;
    conns_request_read(s->conns, req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    if (path == NULL || path[0] == '\0')
        path = "/";
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(path, routes[i].path) == 0) {
            handle_ingest(s, req, &routes[i], query);
            return;
        }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    if (strcmp(path, "/health") == 0 || strcmp(path, "/metrics") == 0 ||
        strcmp(path, "/version") == 0 || strcmp(path, "/health/live") == 0) {
        if (!get) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
            reply_text(s, req, 405, "method not allowed");
        } else if (strcmp(path, "/health") == 0) {
            handle_health(s, req);
        } else if (strcmp(path, "/health/live") == 0) {
            reply_counted(s, req, 200, "text/plain; charset=utf-8", "ok", 2, NULL, 0);
        } else if (strcmp(path, "/version") == 0) {
            const char *v = "{\"version\":\"" PINTLE_VERSION "\",\"service\":\"pintle-gateway\"}";
            reply_counted(s, req, 200, "application/json", v, strlen(v), NULL, 0);
        } else {
            Buf out;
            buf_init(&out);
            render_metrics(s, &out);
            reply_counted(s, req, 200, "text/plain; version=0.0.4", out.data ? out.data : "",
                          out.len, NULL, 0);
            buf_deinit(&out);
        }
        return;
    }
    reply_text(s, req, 404, "not found");
}

Server *server_create(struct event_base *base, const Config *cfg, Writer *writer, WsWatcher *ws,
                      Metrics *metrics, Err *err)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)cfg->gateway.port);
    if (inet_pton(AF_INET, cfg->gateway.listen_address, &sin.sin_addr) != 1) {
        err_set(err, ERR_INVALID, "gateway.listen_address \"%s\" is not an IPv4 address",
                cfg->gateway.listen_address);
        return NULL;
    }
    struct evconnlistener *l = evconnlistener_new_bind(
        base, NULL, NULL,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
        1024, (struct sockaddr *)&sin, sizeof sin);
    if (l == NULL) {
        err_set(err, ERR_IO, "could not listen on %s:%d: %m", cfg->gateway.listen_address,
                cfg->gateway.port);
        return NULL;
    }
    Server *s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->cfg = cfg;
    s->writer = writer;
    s->ws = ws;
    s->metrics = metrics;
    s->listener = l;
    ingest_out_init(&s->scratch);
    buf_init(&s->body);
    hmap_init(&s->buckets);
    hmap_init(&s->codes);
    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen);
    s->port = ntohs(bound.sin_port);
    s->http = evhttp_new(base);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    /* Bodies up to twice the limit are read so that we answer 413 with our
     * own text; beyond that evhttp refuses them itself (413, its HTML body)
     * without buffering them, which keeps memory bounded. */
    evhttp_set_max_body_size(s->http, (ev_ssize_t)cfg->gateway.max_body_bytes * 2);
    /* Larger request lines or headers are refused by evhttp (400) while
     * they arrive, without buffering them. */
    evhttp_set_max_headers_size(s->http, cfg->gateway.max_header_bytes);
    int idle = cfg->gateway.idle_timeout_ms;
    struct timeval idle_tv = {idle / 1000, (idle % 1000) * 1000};
    evhttp_set_timeout_tv(s->http, &idle_tv);
    evhttp_set_gencb(s->http, handle, s);
    s->bound = evhttp_bind_listener(s->http, l);
    int fd_limit = 0;
    int auto_max = conns_default_limit(cfg->db.pool_size, &fd_limit);
    int max_conns = cfg->gateway.max_connections > 0 ? cfg->gateway.max_connections : auto_max;
    if (cfg->gateway.max_connections > auto_max)
        log_warn("connection_limit_high",
                 "max_connections=%d fd_limit=%d reason=\"above the descriptor limit minus a"
                 " reserve: accept() may run out of descriptors\"",
                 max_conns, fd_limit);
    log_info("connection_limit", "max_connections=%d fd_limit=%d", max_conns, fd_limit);
    s->conns = conns_create(base, s->http, l, &cfg->gateway, max_conns, metrics);
    s->m_latency =
        metrics_series(metrics, "pintle_gateway_request_duration_seconds",
                       "Time from parsing an ingestion request to its reply", METRIC_HISTOGRAM, "");
    return s;
}

void server_destroy(Server *s)
{
    if (s == NULL)
        return;
    if (s->drain_check != NULL)
        event_free(s->drain_check);
    evhttp_free(s->http);
    conns_destroy(s->conns); /* after evhttp has freed the connections */
    ingest_out_deinit(&s->scratch);
    buf_deinit(&s->body);
    size_t i = 0;
    HMapEntry *e;
    while (hmap_next(&s->buckets, &i, &e))
        free(e->value);
    hmap_deinit(&s->buckets);
    i = 0;
    while (hmap_next(&s->codes, &i, &e))
        free(e->value);
    hmap_deinit(&s->codes);
    free(s);
}

void server_drain(Server *s, void (*done)(void *), void *arg)
{
    s->draining = true;
    if (s->bound != NULL) {
        conns_forget_listener(s->conns);
        evhttp_del_accept_socket(s->http, s->bound);
        s->bound = NULL;
    }
    int closed = conns_drain(s->conns);
    log_info("idle_connections_closed", "count=%d open_requests=%d receiving=%d", closed,
             s->open_requests, conns_reading(s->conns));
    s->drained = done;
    s->drained_arg = arg;
    if (s->drain_check == NULL) {
        s->drain_check = event_new(s->base, -1, EV_PERSIST, on_drain_check, s);
        struct timeval tv = {0, 20 * 1000};
        event_add(s->drain_check, &tv);
    }
    maybe_drained(s);
}

int server_port(const Server *s)
{
    return s->port;
}
