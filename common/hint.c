#include "common/hint.h"

#include <event2/event.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xalloc.h"

struct HintPub {
    int sock;
};

struct HintSub {
    int sock;
    struct event *ev;
    void (*on_hint)(void *, const char *);
    void *arg;
};

HintPub *hint_pub_open(const char *endpoints, Err *err)
{
    int s = nn_socket(AF_SP, NN_PUB);
    if (s < 0) {
        err_set(err, ERR_IO, "could not create hint socket: %s", nn_strerror(nn_errno()));
        return NULL;
    }
    char *list = xstrdup(endpoints);
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        if (*ep == '\0')
            continue;
        /* connect is asynchronous: a consumer that is not up yet is reached later */
        if (nn_connect(s, ep) < 0) {
            err_set(err, ERR_INVALID, "could not use hint endpoint \"%s\": %s", ep,
                    nn_strerror(nn_errno()));
            free(list);
            nn_close(s);
            return NULL;
        }
    }
    free(list);
    HintPub *p = xcalloc(1, sizeof(*p));
    p->sock = s;
    return p;
}

void hint_pub_close(HintPub *p)
{
    if (p == NULL)
        return;
    int linger = 0;
    nn_setsockopt(p->sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof(linger));
    nn_close(p->sock);
    free(p);
}

void hint_pub_send(HintPub *p, const char *topic)
{
    if (p == NULL)
        return;
    /* NN_DONTWAIT: a slow or absent subscriber costs a dropped hint, never a stall */
    (void)nn_send(p->sock, topic, strlen(topic), NN_DONTWAIT);
}

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

HintSub *hint_sub_open(struct event_base *base, const char *endpoint,
                       void (*on_hint)(void *, const char *), void *arg, Err *err)
{
    int sock = nn_socket(AF_SP, NN_SUB);
    if (sock < 0) {
        err_set(err, ERR_IO, "could not create hint socket: %s", nn_strerror(nn_errno()));
        return NULL;
    }
    nn_setsockopt(sock, NN_SUB, NN_SUB_SUBSCRIBE, "", 0);
    /* nanomsg replaces a stale ipc socket file left by a crashed process, but
     * refuses one a live process is listening on (a second consumer polls). */
    if (nn_bind(sock, endpoint) < 0) {
        err_set(err, ERR_IO, "could not bind hint endpoint \"%s\": %s", endpoint,
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
    free(s);
}
