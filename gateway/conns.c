#include "gateway/conns.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/xalloc.h"

#define SWEEP_MS           100
#define ACCEPT_BACKOFF_MS  50 /* first pause after accept() fails */
#define ACCEPT_BACKOFF_MAX 2000
#define TRIM_BYTES         (4 << 20) /* give freed request memory back to the OS past this */
/* A request smaller than this is never paused: the bound is meant for
 * large unfinished bodies, and must not let them stall ordinary events. */
#define SMALL_REQUEST_BYTES (64 << 10)

typedef struct Conn {
    struct Conn *prev, *next;
    Conns *owner;
    struct bufferevent *bev; /* our reference keeps it (and its socket) until we drop it */
    int fd;                  /* -1 until evhttp has set it */
    bool reading;            /* a request has started arriving */
    bool in_request;         /* a request was read and is not answered yet */
    bool paused;             /* not read: partial bytes over the bound */
    bool timed_out;
    struct timeval since; /* first byte of the current request */
    size_t partial;       /* bytes of the current request received so far */
} Conn;

struct Conns {
    struct event_base *base;
    const GatewayConfig *cfg;
    struct evconnlistener *listener;
    int max;
    int open;
    bool full;        /* listener disabled: max reached */
    bool backing_off; /* listener disabled: accept() failed */
    int backoff_ms;
    unsigned long accept_failures; /* in the current episode */
    Conn *head;
    Conn **by_fd;
    int nfd;
    size_t partial_total;
    size_t freed_since_trim;
    bool trim_due;
    int npaused;
    bool draining; /* idle connections are closed (conns_drain) */
    struct event *sweep;
    struct event *backoff;
    unsigned long timeouts_unlogged;
    struct timeval timeout_logged;
    MetricSeries *m_open, *m_timeouts, *m_accept_errors, *m_paused;
};

/* GLOBAL: libevent calls a listener's error callback with the listener's
 * user data only, which evhttp owns (its struct evhttp), so the callback
 * has no other way to the module's state. One HTTP server per process. */
static Conns *g_accept_owner;

static bool conn_dead(Conn *k)
{
    bufferevent_data_cb r, w;
    bufferevent_event_cb e;
    void *arg;
    bufferevent_getcb(k->bev, &r, &w, &e, &arg);
    return r == NULL && w == NULL && e == NULL;
}

static void listener_update(Conns *c)
{
    if (c->listener == NULL)
        return;
    bool want = !c->full && !c->backing_off;
    if (want)
        evconnlistener_enable(c->listener);
    else
        evconnlistener_disable(c->listener);
}

static void partial_sub(Conns *c, Conn *k)
{
    c->partial_total -= k->partial;
    c->freed_since_trim += k->partial;
    k->partial = 0;
}

/* Reading paused connections again once the partial bytes are under the bound. */
static void resume_paused(Conns *c)
{
    if (c->npaused == 0 || c->partial_total >= (size_t)c->cfg->max_partial_request_bytes)
        return;
    for (Conn *k = c->head; k != NULL && c->npaused > 0; k = k->next)
        if (k->paused) {
            k->paused = false;
            c->npaused--;
            bufferevent_enable(k->bev, EV_READ);
        }
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    Conn *k = arg;
    Conns *c = k->owner;
    if (info->n_added == 0)
        return;
    if (conn_dead(k)) {
        /* evhttp is done with it; the sweep drops it */
        bufferevent_disable(k->bev, EV_READ | EV_WRITE);
        evbuffer_drain(buf, evbuffer_get_length(buf));
        return;
    }
    if (k->fd < 0) {
        k->fd = (int)bufferevent_getfd(k->bev);
        if (k->fd >= c->nfd) {
            int n = c->nfd ? c->nfd : 256;
            while (n <= k->fd)
                n *= 2;
            c->by_fd = xrealloc(c->by_fd, sizeof(Conn *) * (size_t)n);
            memset(c->by_fd + c->nfd, 0, sizeof(Conn *) * (size_t)(n - c->nfd));
            c->nfd = n;
        }
        if (k->fd >= 0)
            c->by_fd[k->fd] = k;
    }
    if (!k->reading) {
        k->reading = true;
        event_base_gettimeofday_cached(c->base, &k->since);
    }
    k->partial += info->n_added;
    c->partial_total += info->n_added;
    if (c->partial_total > (size_t)c->cfg->max_partial_request_bytes && !k->paused &&
        k->partial > SMALL_REQUEST_BYTES) {
        k->paused = true;
        c->npaused++;
        metrics_inc(c->m_paused, 1);
        bufferevent_disable(k->bev, EV_READ);
    }
}

static void drop(Conns *c, Conn *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        c->head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    if (k->fd >= 0 && k->fd < c->nfd && c->by_fd[k->fd] == k)
        c->by_fd[k->fd] = NULL;
    if (k->paused)
        c->npaused--;
    partial_sub(c, k);
    c->open--;
    bufferevent_decref(k->bev); /* the last reference: closes the socket */
    free(k);
}

/* Closes k the way a client closing it would look to evhttp, which frees
 * the connection. Only for a connection with no request in progress. */
static void close_as_eof(Conns *c, Conn *k)
{
    bufferevent_data_cb r, w;
    bufferevent_event_cb e;
    void *cbarg;
    bufferevent_getcb(k->bev, &r, &w, &e, &cbarg);
    if (e != NULL)
        e(k->bev, BEV_EVENT_READING | BEV_EVENT_EOF, cbarg);
    if (conn_dead(k))
        drop(c, k);
}

/* Idle: no byte of a next request read, no request being answered, and
 * the last answer written out (closing earlier would cut it). */
static bool conn_idle(Conn *k)
{
    return !k->reading && !k->in_request && !conn_dead(k) &&
           evbuffer_get_length(bufferevent_get_output(k->bev)) == 0;
}

static int close_idle(Conns *c)
{
    int n = 0;
    for (Conn *k = c->head; k != NULL;) {
        Conn *next = k->next;
        if (conn_idle(k)) {
            close_as_eof(c, k);
            n++;
        }
        k = next;
    }
    return n;
}

static void log_timeouts(Conns *c, const struct timeval *now, bool force)
{
    if (c->timeouts_unlogged == 0)
        return;
    double since = (double)(now->tv_sec - c->timeout_logged.tv_sec);
    if (!force && since < 1.0)
        return;
    log_warn("request_timeout", "connections=%lu timeout_ms=%d", c->timeouts_unlogged,
             c->cfg->request_timeout_ms);
    c->timeouts_unlogged = 0;
    c->timeout_logged = *now;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    Conns *c = arg;
    struct timeval now;
    event_base_gettimeofday_cached(c->base, &now);
    long limit_ms = c->cfg->request_timeout_ms;
    for (Conn *k = c->head; k != NULL;) {
        Conn *next = k->next;
        if (conn_dead(k)) {
            drop(c, k);
        } else if (k->reading && !k->timed_out &&
                   (now.tv_sec - k->since.tv_sec) * 1000L +
                           (now.tv_usec - k->since.tv_usec) / 1000L >=
                       limit_ms) {
            /* Fail it the way its own read timeout would: evhttp frees
             * the connection (and the request it was reading). */
            k->timed_out = true;
            metrics_inc(c->m_timeouts, 1);
            c->timeouts_unlogged++;
            bufferevent_data_cb r, w;
            bufferevent_event_cb e;
            void *cbarg;
            bufferevent_getcb(k->bev, &r, &w, &e, &cbarg);
            if (e != NULL)
                e(k->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, cbarg);
            if (conn_dead(k))
                drop(c, k);
        }
        k = next;
    }
    log_timeouts(c, &now, false);
    if (c->draining)
        close_idle(c); /* those whose last answer was still being written */
    if (c->full && c->open < c->max) {
        c->full = false;
        listener_update(c);
    }
    resume_paused(c);
    if (c->trim_due) {
        /* Large request buffers were freed (libevent frees a closed
         * connection's buffers after the sweep that dropped it): return the
         * memory to the system. */
        malloc_trim(0);
        c->trim_due = false;
    }
    if (c->freed_since_trim > TRIM_BYTES) {
        c->trim_due = true;
        c->freed_since_trim = 0;
    }
    metrics_set(c->m_open, c->open);
}

static struct bufferevent *on_new_connection(struct event_base *base, void *arg)
{
    Conns *c = arg;
    if (c->accept_failures > 0) {
        log_info("accept_recovered", "failures=%lu open_connections=%d", c->accept_failures,
                 c->open);
        c->accept_failures = 0;
        c->backoff_ms = 0;
    }
    Conn *k = xcalloc(1, sizeof(*k));
    k->owner = c;
    k->fd = -1;
    k->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (k->bev == NULL) {
        free(k);
        return NULL; /* evhttp closes the socket */
    }
    bufferevent_incref(k->bev);
    evbuffer_add_cb(bufferevent_get_input(k->bev), on_input, k);
    k->next = c->head;
    if (c->head)
        c->head->prev = k;
    c->head = k;
    if (++c->open >= c->max && !c->full) {
        c->full = true;
        listener_update(c);
    }
    return k->bev;
}

static void on_backoff_over(evutil_socket_t fd, short what, void *arg)
{
    Conns *c = arg;
    c->backing_off = false;
    listener_update(c);
}

/* accept() failed with something other than EAGAIN/EINTR/ECONNABORTED:
 * typically EMFILE/ENFILE (no descriptors) or ENOBUFS/ENOMEM. The pending
 * connection stays in the kernel's queue, so retrying at once would spin. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    Conns *c = g_accept_owner;
    int e = EVUTIL_SOCKET_ERROR();
    if (c == NULL || c->listener != l) {
        evconnlistener_disable(l); /* not ours any more: stop the spin at least */
        return;
    }
    metrics_inc(c->m_accept_errors, 1);
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : ACCEPT_BACKOFF_MS;
    if (c->backoff_ms > ACCEPT_BACKOFF_MAX)
        c->backoff_ms = ACCEPT_BACKOFF_MAX;
    if (c->accept_failures++ == 0)
        log_warn("accept_failed", "error=\"%s\" open_connections=%d max_connections=%d",
                 evutil_socket_error_to_string(e), c->open, c->max);
    c->backing_off = true;
    listener_update(c);
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    evtimer_add(c->backoff, &tv);
}

Conns *conns_create(struct event_base *base, struct evhttp *http, struct evconnlistener *l,
                    const GatewayConfig *cfg, int max_connections, Metrics *m)
{
    Conns *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->cfg = cfg;
    c->listener = l;
    c->max = max_connections;
    c->sweep = event_new(base, -1, EV_PERSIST, on_sweep, c);
    struct timeval every = {0, SWEEP_MS * 1000};
    event_add(c->sweep, &every);
    c->backoff = evtimer_new(base, on_backoff_over, c);
    evhttp_set_bevcb(http, on_new_connection, c);
    g_accept_owner = c;
    evconnlistener_set_error_cb(l, on_accept_error);
    c->m_open = metrics_series(m, "pintle_gateway_connections", "Open client connections",
                               METRIC_GAUGE, "");
    c->m_timeouts = metrics_series(m, "pintle_gateway_request_timeouts_total",
                                   "Connections closed because a request did not arrive in time",
                                   METRIC_COUNTER, "");
    c->m_accept_errors =
        metrics_series(m, "pintle_gateway_accept_errors_total",
                       "accept() failures (e.g. out of file descriptors)", METRIC_COUNTER, "");
    c->m_paused = metrics_series(
        m, "pintle_gateway_reads_paused_total",
        "Times a connection stopped being read because partial requests hit their bound",
        METRIC_COUNTER, "");
    return c;
}

void conns_destroy(Conns *c)
{
    if (c == NULL)
        return;
    struct timeval now;
    gettimeofday(&now, NULL);
    log_timeouts(c, &now, true);
    while (c->head != NULL)
        drop(c, c->head);
    if (g_accept_owner == c)
        g_accept_owner = NULL;
    event_free(c->sweep);
    event_free(c->backoff);
    free(c->by_fd);
    free(c);
}

void conns_request_read(Conns *c, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    int fd = bev ? (int)bufferevent_getfd(bev) : -1;
    if (fd < 0 || fd >= c->nfd || c->by_fd[fd] == NULL)
        return;
    Conn *k = c->by_fd[fd];
    k->in_request = true;
    partial_sub(c, k);
    /* Bytes of a pipelined next request already read start its deadline. */
    size_t left = evbuffer_get_length(bufferevent_get_input(bev));
    k->reading = left > 0;
    if (k->reading) {
        event_base_gettimeofday_cached(c->base, &k->since);
        k->partial = left;
        c->partial_total += left;
    }
    resume_paused(c);
}

void conns_reply_started(Conns *c, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    int fd = bev ? (int)bufferevent_getfd(bev) : -1;
    if (fd >= 0 && fd < c->nfd && c->by_fd[fd] != NULL)
        c->by_fd[fd]->in_request = false;
}

int conns_drain(Conns *c)
{
    c->draining = true;
    return close_idle(c);
}

void conns_forget_listener(Conns *c)
{
    c->listener = NULL;
    evtimer_del(c->backoff);
}

int conns_open(const Conns *c)
{
    return c->open;
}

int conns_reading(const Conns *c)
{
    int n = 0;
    for (Conn *k = c->head; k != NULL; k = k->next)
        n += k->reading && !conn_dead(k);
    return n;
}

int conns_default_limit(int db_pool_size, int *fd_limit)
{
    struct rlimit rl;
    long lim = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        lim = (long)rl.rlim_cur;
    else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        lim = 1 << 20;
    if (lim > 1 << 20)
        lim = 1 << 20;
    *fd_limit = (int)lim;
    /* stdio, the loop, signals, listener, nanomsg, the db pool, curl, files */
    long reserve = 32 + 2L * db_pool_size;
    long n = lim - reserve;
    return n < 8 ? 8 : (int)n;
}
