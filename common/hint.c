#include "common/hint.h"

#include <errno.h>
#include <event2/event.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/db.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/xalloc.h"

#define ENDPOINT_MAX 512
/* A publisher retries a dead consumer's endpoint at most this far apart
 * (nanomsg's default is a constant 100 ms), until discovery drops it. */
#define RECONNECT_MAX_MS 1000
/* How soon a lookup is tried again when no pool connection was idle. */
#define DISCOVERY_RETRY_MS 200

/* Live consumers of a stage that receive hints. expires_at is the lease
 * heartbeat's: a killed instance drops out within lease.ttl_ms. An ipc://
 * endpoint is a path on its own host: only those of this host ($2, the
 * instances.host the lease module writes) are reachable. */
static const char DISCOVERY_SQL[] = "SELECT DISTINCT hint_endpoint FROM instances"
                                    " WHERE stage = $1 AND expires_at > now()"
                                    " AND hint_endpoint <> ''"
                                    " AND (hint_endpoint NOT LIKE 'ipc://%' OR host = $2)";

/* ---- endpoint templates ---- */

int hint_format_endpoint(char *out, size_t size, const char *tmpl, const char *stage, Err *err)
{
    if (size == 0)
        return err_set(err, ERR_INVALID, "no room for hint endpoint \"%s\"", tmpl);
    char host[256];
    size_t n = 0;
    for (const char *t = tmpl; *t; t++) {
        char num[32];
        const char *piece = NULL;
        char one[2] = {*t, '\0'};
        if (*t != '%') {
            piece = one;
        } else {
            switch (t[1]) {
            case 's':
                piece = stage;
                break;
            case 'p':
                snprintf(num, sizeof num, "%d", (int)getpid());
                piece = num;
                break;
            case 'h':
                if (gethostname(host, sizeof host) != 0)
                    return err_set(err, ERR_IO, "could not get the host name for \"%s\": %s", tmpl,
                                   strerror(errno));
                host[sizeof host - 1] = '\0';
                piece = host;
                break;
            case '%':
                piece = "%";
                break;
            default:
                return err_set(err, ERR_INVALID,
                               "hint endpoint \"%s\": unknown placeholder \"%%%.1s\" (use %%s "
                               "stage, %%p pid, %%h host name, %%%% percent)",
                               tmpl, t[1] ? t + 1 : "");
            }
            t++;
        }
        size_t len = strlen(piece);
        if (n + len + 1 > size)
            return err_set(err, ERR_INVALID, "hint endpoint \"%s\" is longer than %zu bytes", tmpl,
                           size - 1);
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n] = '\0';
    return 0;
}

int hint_format_advertise(char *out, size_t size, const char *bound, const char *advertise_tmpl,
                          const char *stage, Err *err)
{
    if (advertise_tmpl != NULL && advertise_tmpl[0] != '\0')
        return hint_format_endpoint(out, size, advertise_tmpl, stage, err);
    static const char *const wildcards[] = {"*", "0.0.0.0", "::", "[::]"};
    const char *colon = strrchr(bound, ':');
    if (strncmp(bound, "tcp://", 6) == 0 && colon != NULL && colon > bound + 6) {
        size_t hlen = (size_t)(colon - (bound + 6));
        for (size_t i = 0; i < sizeof wildcards / sizeof wildcards[0]; i++) {
            if (strlen(wildcards[i]) == hlen && memcmp(bound + 6, wildcards[i], hlen) == 0) {
                char tmpl[ENDPOINT_MAX];
                snprintf(tmpl, sizeof tmpl, "tcp://%%h%s", colon);
                return hint_format_endpoint(out, size, tmpl, stage, err);
            }
        }
    }
    if (strlen(bound) + 1 > size)
        return err_set(err, ERR_INVALID, "hint endpoint \"%s\" is longer than %zu bytes", bound,
                       size - 1);
    memcpy(out, bound, strlen(bound) + 1);
    return 0;
}

/* ---- publisher ---- */

typedef struct Peer {
    char *endpoint;
    int eid;        /* nanomsg endpoint id; -1: nanomsg refused it (logged once) */
    bool is_static; /* from the config: kept whatever discovery says */
    bool seen;      /* listed by the last lookup */
} Peer;

struct HintPub {
    int sock;
    char *stage;
    Peer *peers;
    int npeers, cap;
    DbPool *pool;
    int interval_ms;
    struct event *timer;
    bool lookup_failed; /* the last lookup failed (logged once per episode) */
};

static Peer *find_peer(HintPub *p, const char *endpoint)
{
    for (int i = 0; i < p->npeers; i++)
        if (strcmp(p->peers[i].endpoint, endpoint) == 0)
            return &p->peers[i];
    return NULL;
}

/* Connects to endpoint unless already connected. A static endpoint that
 * nanomsg refuses is a configuration error; a discovered one is logged and
 * remembered, so it is neither retried nor logged again while listed. */
static int add_peer(HintPub *p, const char *endpoint, bool is_static, Err *err)
{
    Peer *known = find_peer(p, endpoint);
    if (known != NULL) {
        known->seen = true;
        known->is_static = known->is_static || is_static;
        return 0;
    }
    /* connect is asynchronous: a consumer that is not up yet is reached later */
    int eid = nn_connect(p->sock, endpoint);
    if (eid < 0) {
        if (is_static)
            return err_set(err, ERR_INVALID, "could not use hint endpoint \"%s\": %s", endpoint,
                           nn_strerror(nn_errno()));
        char q[ENDPOINT_MAX + 8];
        log_warn("hint_peer_invalid", "stage=%s endpoint=%s error=\"%s\"", p->stage,
                 log_quote(q, sizeof q, endpoint), nn_strerror(nn_errno()));
    } else {
        char q[ENDPOINT_MAX + 8];
        log_info("hint_peer_connected", "stage=%s endpoint=%s source=%s", p->stage,
                 log_quote(q, sizeof q, endpoint), is_static ? "config" : "instances");
    }
    if (p->npeers == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 4;
        p->peers = xrealloc(p->peers, (size_t)p->cap * sizeof(Peer));
    }
    p->peers[p->npeers++] = (Peer){xstrdup(endpoint), eid, is_static, true};
    return 0;
}

static void drop_unseen(HintPub *p)
{
    int k = 0;
    for (int i = 0; i < p->npeers; i++) {
        Peer *peer = &p->peers[i];
        if (peer->seen || peer->is_static) {
            p->peers[k++] = *peer;
            continue;
        }
        if (peer->eid >= 0) {
            /* the instance left or its heartbeat expired */
            (void)nn_shutdown(p->sock, peer->eid);
            char q[ENDPOINT_MAX + 8];
            log_info("hint_peer_disconnected", "stage=%s endpoint=%s", p->stage,
                     log_quote(q, sizeof q, peer->endpoint));
        }
        free(peer->endpoint);
    }
    p->npeers = k;
}

static void arm(HintPub *p, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
}

static void on_lookup(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    HintPub *p = arg;
    arm(p, p->interval_ms);
    if (err != NULL) {
        /* keep the peers we have: the database being away says nothing about them */
        if (!p->lookup_failed) {
            char q[1100];
            log_warn("hint_discovery_failed", "stage=%s error=%s", p->stage,
                     log_quote(q, sizeof q, err->msg));
        }
        p->lookup_failed = true;
        return;
    }
    if (p->lookup_failed)
        log_info("hint_discovery_recovered", "stage=%s", p->stage);
    p->lookup_failed = false;
    for (int i = 0; i < p->npeers; i++)
        p->peers[i].seen = false;
    int n = res != NULL ? PQntuples(res) : 0;
    for (int i = 0; i < n; i++) {
        const char *ep = PQgetvalue(res, i, 0);
        if (strlen(ep) >= ENDPOINT_MAX)
            continue; /* no consumer advertises that; not worth a socket */
        Err ignored;
        (void)add_peer(p, ep, false, &ignored); /* a discovered peer never fails */
    }
    drop_unseen(p);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    HintPub *p = arg;
    DbConn *c = db_pool_acquire(p->pool);
    if (c == NULL) {
        arm(p, DISCOVERY_RETRY_MS); /* all busy or connecting: the owner's work goes first */
        return;
    }
    char host[64];
    ids_host_name(host, sizeof host); /* as the lease heartbeat records it */
    const char *params[2] = {p->stage, host};
    if (db_exec(c, DISCOVERY_SQL, 2, params, NULL, 0, on_lookup, p) < 0) {
        db_conn_release(c);
        arm(p, p->interval_ms);
    }
}

HintPub *hint_pub_open(struct event_base *base, const char *stage, const char *static_endpoints,
                       DbPool *pool, int discovery_interval_ms, Err *err)
{
    int s = nn_socket(AF_SP, NN_PUB);
    if (s < 0) {
        err_set(err, ERR_IO, "could not create hint socket: %s", nn_strerror(nn_errno()));
        return NULL;
    }
    int ivl = RECONNECT_MAX_MS;
    (void)nn_setsockopt(s, NN_SOL_SOCKET, NN_RECONNECT_IVL_MAX, &ivl, sizeof ivl);
    HintPub *p = xcalloc(1, sizeof(*p));
    p->sock = s;
    p->stage = xstrdup(stage);
    char *list = xstrdup(static_endpoints ? static_endpoints : "");
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        size_t len = strlen(ep);
        while (len > 0 && ep[len - 1] == ' ')
            ep[--len] = '\0';
        if (*ep == '\0')
            continue;
        if (add_peer(p, ep, true, err) < 0) {
            free(list);
            hint_pub_close(p);
            return NULL;
        }
    }
    free(list);
    if (pool != NULL && discovery_interval_ms > 0) {
        p->pool = pool;
        p->interval_ms = discovery_interval_ms;
        p->timer = evtimer_new(base, on_timer, p);
        arm(p, 0);
    }
    return p;
}

void hint_pub_close(HintPub *p)
{
    if (p == NULL)
        return;
    /* A lookup in flight never calls back: this runs at teardown, after the
     * loop stopped, and the pool's destruction drops pending callbacks. */
    if (p->timer)
        event_free(p->timer);
    int linger = 0;
    (void)nn_setsockopt(p->sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof(linger));
    nn_close(p->sock);
    for (int i = 0; i < p->npeers; i++)
        free(p->peers[i].endpoint);
    free(p->peers);
    free(p->stage);
    free(p);
}

void hint_pub_send(HintPub *p, const char *topic)
{
    if (p == NULL)
        return;
    /* NN_DONTWAIT: a slow or absent subscriber costs a dropped hint, never a stall */
    (void)nn_send(p->sock, topic, strlen(topic), NN_DONTWAIT);
}

int hint_pub_peers(const HintPub *p)
{
    int n = 0;
    for (int i = 0; p != NULL && i < p->npeers; i++)
        if (p->peers[i].eid >= 0)
            n++;
    return n;
}

/* ---- subscriber ---- */

/* Whether a live process listens on the unix socket at path. nanomsg asks
 * the same before it binds, but leaks its endpoint when the answer is yes
 * (1.1.5), so the subscriber asks first. */
static bool ipc_in_use(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        return false; /* nanomsg refuses it with its own error */
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool live = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return live;
}

struct HintSub {
    int sock;
    struct event *ev;
    void (*on_hint)(void *, const char *);
    void *arg;
    char *ipc_path; /* the socket file to remove on close, or NULL */
    char *advertised;
};

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    HintSub *s = arg;
    for (int i = 0; i < 1024; i++) {
        char buf[256];
        int n = nn_recv(s->sock, buf, sizeof(buf) - 1, NN_DONTWAIT);
        if (n < 0)
            break;
        buf[n < (int)sizeof(buf) - 1 ? n : (int)sizeof(buf) - 1] = '\0';
        s->on_hint(s->arg, buf);
    }
}

HintSub *hint_sub_open(struct event_base *base, const char *bind_tmpl, const char *advertise_tmpl,
                       const char *stage, void (*on_hint)(void *, const char *), void *arg,
                       Err *err)
{
    char bound[ENDPOINT_MAX], advertised[ENDPOINT_MAX];
    if (hint_format_endpoint(bound, sizeof bound, bind_tmpl, stage, err) < 0)
        return NULL;
    if (hint_format_advertise(advertised, sizeof advertised, bound, advertise_tmpl, stage, err) < 0)
        return NULL;
    int sock = nn_socket(AF_SP, NN_SUB);
    if (sock < 0) {
        err_set(err, ERR_IO, "could not create hint socket: %s", nn_strerror(nn_errno()));
        return NULL;
    }
    (void)nn_setsockopt(sock, NN_SUB, NN_SUB_SUBSCRIBE, "", 0);
    /* nanomsg replaces a stale ipc socket file left by a crashed process, but
     * refuses one a live process is listening on. */
    if (strncmp(bound, "ipc://", 6) == 0 && ipc_in_use(bound + 6)) {
        err_set(err, ERR_IO, "could not bind hint endpoint \"%s\": %s", bound,
                nn_strerror(EADDRINUSE));
        nn_close(sock);
        return NULL;
    }
    if (nn_bind(sock, bound) < 0) {
        err_set(err, ERR_IO, "could not bind hint endpoint \"%s\": %s", bound,
                nn_strerror(nn_errno()));
        nn_close(sock);
        return NULL;
    }
    int fd = -1;
    size_t sz = sizeof(fd);
    if (nn_getsockopt(sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &sz) < 0) {
        err_set(err, ERR_IO, "could not get hint socket fd: %s", nn_strerror(nn_errno()));
        nn_close(sock);
        return NULL;
    }
    HintSub *s = xcalloc(1, sizeof(*s));
    s->sock = sock;
    s->on_hint = on_hint;
    s->arg = arg;
    if (strncmp(bound, "ipc://", 6) == 0)
        s->ipc_path = xstrdup(bound + 6);
    s->advertised = xstrdup(advertised);
    s->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, s);
    event_add(s->ev, NULL);
    return s;
}

void hint_sub_close(HintSub *s)
{
    if (s == NULL)
        return;
    event_free(s->ev);
    nn_close(s->sock);
    /* The file is ours (we bound it); left behind, each restart with a new
     * pid would add one more to the directory. */
    if (s->ipc_path != NULL)
        (void)unlink(s->ipc_path);
    free(s->ipc_path);
    free(s->advertised);
    free(s);
}

const char *hint_sub_endpoint(const HintSub *s)
{
    return s != NULL ? s->advertised : "";
}
