#include "common/httpc.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/xalloc.h"

struct Httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    int inflight;
    struct Transfer *transfers; /* every transfer in flight, for shutdown */
    CURL *spare[64];            /* finished easy handles, reset for reuse */
    int nspare;
    struct Transfer *cancelled; /* removed from the multi, callbacks pending */
    struct event *cancel_ev;
    struct curl_slist *connect_to; /* CURLOPT_CONNECT_TO entries, or NULL */
    char *ca_file;                 /* CURLOPT_CAINFO, or NULL */
};

typedef struct Transfer {
    struct Transfer *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    Buf resp;
    size_t max_resp;
    bool keep_prefix;
    bool truncated;
    HttpcDoneCb done;
    void *arg;
    char errbuf[CURL_ERROR_SIZE];
} Transfer;

typedef struct SockCtx {
    struct event *ev;
} SockCtx;

static void unlink_transfer(Httpc *h, Transfer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        h->transfers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

/* Reports t to its owner and recycles its easy handle (already removed
 * from the multi handle and unlinked). */
static void finish(Httpc *h, Transfer *t, HttpcResponse *r)
{
    if (t->resp.data == NULL)
        buf_puts(&t->resp, "");
    r->body = t->resp.data;
    r->body_len = t->resp.len;
    r->truncated = t->truncated;
    t->done(t->arg, r);
    /* reusing handles saves their (large) allocations on every request */
    if (h->nspare < (int)(sizeof h->spare / sizeof h->spare[0])) {
        curl_easy_reset(t->easy);
        h->spare[h->nspare++] = t->easy;
    } else {
        curl_easy_cleanup(t->easy);
    }
    curl_slist_free_all(t->headers);
    free(t->body);
    buf_deinit(&t->resp);
    free(t);
}

static void check_done(Httpc *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        Transfer *t = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
        HttpcResponse r;
        memset(&r, 0, sizeof r);
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
        curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &r.seconds);
        r.curl_code = (int)code;
        if (code == CURLE_WRITE_ERROR && t->truncated) {
            r.error = "response larger than the limit"; /* the status is the server's */
        } else if (code != CURLE_OK) {
            r.error = t->errbuf[0] ? t->errbuf : curl_easy_strerror(code);
            r.status = 0;
        }
        curl_multi_remove_handle(h->multi, easy);
        h->inflight--;
        unlink_transfer(h, t);
        finish(h, t, &r);
    }
}

static void on_cancelled(evutil_socket_t fd, short what, void *arg)
{
    Httpc *h = arg;
    while (h->cancelled != NULL) {
        Transfer *t = h->cancelled;
        h->cancelled = t->next;
        HttpcResponse r;
        memset(&r, 0, sizeof r);
        r.curl_code = CURLE_ABORTED_BY_CALLBACK;
        r.error = "cancelled";
        finish(h, t, &r);
    }
}

void httpc_cancel_all(Httpc *h)
{
    while (h->transfers != NULL) {
        Transfer *t = h->transfers;
        unlink_transfer(h, t);
        curl_multi_remove_handle(h->multi, t->easy);
        h->inflight--;
        t->prev = NULL;
        t->next = h->cancelled;
        h->cancelled = t;
    }
    if (h->cancelled != NULL)
        event_active(h->cancel_ev, 0, 0);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    Httpc *h = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(h->multi, fd, action, &running);
    check_done(h);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    Httpc *h = arg;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(h);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    Httpc *h = userp;
    SockCtx *ctx = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            event_free(ctx->ev);
            free(ctx);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (ctx == NULL) {
        ctx = xcalloc(1, sizeof(*ctx));
        ctx->ev = event_new(h->base, s, kind, on_socket_event, h);
        curl_multi_assign(h->multi, s, ctx);
    } else {
        /* re-arm in place, as curl's libevent example does: safe inside the callback */
        event_del(ctx->ev);
        event_assign(ctx->ev, h->base, s, kind, on_socket_event, h);
    }
    event_add(ctx->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    Httpc *h = userp;
    if (timeout_ms < 0) {
        evtimer_del(h->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    return 0;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    Transfer *t = userdata;
    size_t n = size * nmemb;
    if (t->resp.len + n > t->max_resp) {
        t->truncated = true;
        if (!t->keep_prefix)
            return 0; /* aborts the transfer (CURLE_WRITE_ERROR) */
        if (t->resp.len < t->max_resp)
            buf_append(&t->resp, ptr, t->max_resp - t->resp.len);
        return n;
    }
    buf_append(&t->resp, ptr, n);
    return n;
}

Httpc *httpc_create(struct event_base *base, long max_host_connections)
{
    static int initialised;
    if (!initialised) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        initialised = 1;
    }
    Httpc *h = xcalloc(1, sizeof(*h));
    h->base = base;
    h->multi = curl_multi_init();
    h->timer = evtimer_new(base, on_timeout, h);
    h->cancel_ev = event_new(base, -1, 0, on_cancelled, h);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    if (max_host_connections > 0)
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_connections);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 256L);
    return h;
}

void httpc_destroy(Httpc *h)
{
    if (h == NULL)
        return;
    /* abandon transfers still in flight (shutdown): their callbacks do not run */
    while (h->transfers != NULL || h->cancelled != NULL) {
        Transfer *t = h->transfers;
        if (t != NULL) {
            unlink_transfer(h, t);
            curl_multi_remove_handle(h->multi, t->easy);
        } else {
            t = h->cancelled;
            h->cancelled = t->next;
        }
        curl_easy_cleanup(t->easy);
        curl_slist_free_all(t->headers);
        free(t->body);
        buf_deinit(&t->resp);
        free(t);
    }
    while (h->nspare > 0)
        curl_easy_cleanup(h->spare[--h->nspare]);
    curl_multi_cleanup(h->multi);
    curl_slist_free_all(h->connect_to);
    free(h->ca_file);
    event_free(h->timer);
    event_free(h->cancel_ev);
    free(h);
}

int httpc_start(Httpc *h, const HttpcRequest *req, HttpcDoneCb done, void *arg)
{
    CURL *easy = h->nspare > 0 ? h->spare[--h->nspare] : curl_easy_init();
    if (easy == NULL)
        return -1;
    Transfer *t = xcalloc(1, sizeof(*t));
    t->easy = easy;
    t->done = done;
    t->arg = arg;
    t->max_resp = req->max_response_bytes > 0 ? req->max_response_bytes : (size_t)1 << 20;
    t->keep_prefix = req->keep_prefix;
    buf_init(&t->resp);
    curl_easy_setopt(easy, CURLOPT_URL, req->url);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, req->timeout_ms < 10000 ? req->timeout_ms : 10000);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (h->connect_to != NULL)
        curl_easy_setopt(easy, CURLOPT_CONNECT_TO, h->connect_to);
    if (h->ca_file != NULL)
        curl_easy_setopt(easy, CURLOPT_CAINFO, h->ca_file);
    const char *m = req->method ? req->method : "POST";
    if (req->body != NULL && strcmp(m, "GET") != 0) {
        t->body = xmalloc(req->body_len + 1);
        memcpy(t->body, req->body, req->body_len);
        t->body[req->body_len] = '\0';
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }
    if (strcmp(m, "GET") == 0)
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    else if (strcmp(m, "POST") != 0)
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, m);
    else if (req->body == NULL)
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, 0L), curl_easy_setopt(easy, CURLOPT_POST, 1L);
    /* no "Expect: 100-continue" round trip for larger bodies; but libcurl
     * 7.88 signs a removed header as "expect:" in AWS SigV4 (the server then
     * answers SignatureDoesNotMatch), so signed requests keep libcurl's own
     * Expect (only for bodies over 1 MiB, and not signed) */
    t->headers = req->aws_sigv4 ? NULL : curl_slist_append(NULL, "Expect:");
    for (const char *const *hd = req->headers; hd && *hd; hd++)
        t->headers = curl_slist_append(t->headers, *hd);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
    if (req->aws_sigv4 != NULL) {
        curl_easy_setopt(easy, CURLOPT_AWS_SIGV4, req->aws_sigv4);
        curl_easy_setopt(easy, CURLOPT_USERPWD, req->userpwd ? req->userpwd : ":");
    }
    if (curl_multi_add_handle(h->multi, easy) != CURLM_OK) {
        curl_easy_cleanup(easy);
        curl_slist_free_all(t->headers);
        free(t->body);
        free(t);
        return -1;
    }
    h->inflight++;
    t->next = h->transfers;
    if (h->transfers)
        h->transfers->prev = t;
    h->transfers = t;
    return 0;
}

/* HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT, each part possibly empty
 * (libcurl's rule), ports numeric, and a host in [brackets] for IPv6. */
static bool connect_to_valid(const char *e)
{
    int parts = 0;
    const char *p = e;
    for (;;) {
        const char *start = p;
        if (*p == '[') {
            p = strchr(p, ']');
            if (p == NULL)
                return false;
            p++;
        } else {
            while (*p && *p != ':')
                p++;
        }
        parts++;
        if (parts == 2 || parts == 4)
            for (const char *q = start; q < p; q++)
                if (*q < '0' || *q > '9')
                    return false;
        if (*p == '\0')
            break;
        if (*p != ':')
            return false;
        p++;
    }
    return parts == 4;
}

int httpc_set_connect_to(Httpc *h, const char *list, Err *err)
{
    struct curl_slist *l = NULL;
    const char *p = list ? list : "";
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char *e = xstrndup(p, n);
        char *s = e, *t = e + strlen(e);
        while (*s == ' ')
            s++;
        while (t > s && t[-1] == ' ')
            *--t = '\0';
        if (*s) {
            if (!connect_to_valid(s)) {
                int rc = err_set(err, ERR_INVALID,
                                 "router.connect_to entry \"%.200s\" is not"
                                 " HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT",
                                 s);
                free(e);
                curl_slist_free_all(l);
                return rc;
            }
            l = curl_slist_append(l, s);
        }
        free(e);
        p += n;
        if (*p == ',')
            p++;
    }
    curl_slist_free_all(h->connect_to);
    h->connect_to = l;
    return 0;
}

int httpc_set_ca_file(Httpc *h, const char *path, Err *err)
{
    if (path != NULL && *path && access(path, R_OK) != 0)
        return err_set(err, ERR_INVALID, "cannot read the CA file (router.ca_file) \"%.300s\"", path);
    free(h->ca_file);
    h->ca_file = path != NULL && *path ? xstrdup(path) : NULL;
    return 0;
}

int httpc_inflight(const Httpc *h)
{
    return h->inflight;
}

void httpc_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void httpc_url_encode(Buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
            c == '_' || c == '.' || c == '~') {
            buf_putc(out, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_append(out, e, 3);
        }
    }
}
