/* Creates the process's libevent loop with the options every pintle service
 * uses. Owns nothing after returning; the caller frees the base. */
#ifndef COMMON_LOOP_H
#define COMMON_LOOP_H

struct event_base;

/* epoll with the change list: libevent coalesces the enable/disable of a
 * socket within one loop iteration into a single epoll_ctl, which evhttp
 * and libcurl otherwise issue several times per request. NULL on failure. */
struct event_base *loop_create(void);

#endif
