/* Wake-up hints over nanomsg PUB/SUB (DESIGN §5). Owns its nanomsg socket
 * and, for a subscriber, the loop event on its receive fd.
 * The consumer binds the endpoint (one per consuming stage on a host) and
 * producers connect to it, so any number of producers can hint one consumer.
 * Hints are only an optimisation: sends never block and may be dropped;
 * consumers still poll. */
#ifndef COMMON_HINT_H
#define COMMON_HINT_H

#include "common/err.h"

struct event_base;

typedef struct HintPub HintPub;
typedef struct HintSub HintSub;

/* endpoints: comma-separated list to connect to. NULL on error. */
HintPub *hint_pub_open(const char *endpoints, Err *err);
void hint_pub_close(HintPub *p);
/* Publishes topic (e.g. "gw" or "rt:<destination id>"); never blocks. */
void hint_pub_send(HintPub *p, const char *topic);

/* Binds endpoint and calls on_hint(arg, topic) for each hint received. */
HintSub *hint_sub_open(struct event_base *base, const char *endpoint,
                       void (*on_hint)(void *arg, const char *topic), void *arg, Err *err);
void hint_sub_close(HintSub *s);

#endif
