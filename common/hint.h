/* Wake-up hints over nanomsg PUB/SUB (DESIGN §5). Owns its nanomsg socket,
 * for a subscriber the loop event on its receive fd and its ipc file, for a
 * publisher its discovery timer and the list of endpoints it is connected
 * to. Does not own the DbPool a publisher discovers through.
 *
 * Topology: every consumer instance (processor, router, batchrouter) binds
 * its OWN endpoint (hints.bind, e.g. ipc:///tmp/pintle-router-4121.ipc or
 * tcp://0.0.0.0:7070) and advertises it (hints.advertise, default: the bound
 * endpoint) in its row of the instances table (the lease heartbeat writes
 * hint_sub_endpoint() there). Each producer connects its PUB socket to every
 * live endpoint of the stage it feeds (gateway -> processor, processor ->
 * router and batchrouter), found by a query on the instances table every
 * hints.discovery_interval_ms, plus a static list from the config. PUB fans
 * every hint out to all connected subscribers, so any number of producers
 * reach any number of consumers, on one host or across hosts.
 *
 * Hints are only an optimisation: sends never block and may be dropped (a
 * consumer that just started is reached from the next discovery on);
 * consumers still poll. */
#ifndef COMMON_HINT_H
#define COMMON_HINT_H

#include <stddef.h>

#include "common/err.h"

struct event_base;
typedef struct DbPool DbPool;

typedef struct HintPub HintPub;
typedef struct HintSub HintSub;

/* Expands an endpoint template into out: %s is the stage, %p the process
 * id, %h the host name, %% a percent sign. Fails on another %-sequence or
 * when out is too small. */
MUST_CHECK int hint_format_endpoint(char *out, size_t size, const char *tmpl, const char *stage,
                                    Err *err);

/* The endpoint a subscriber bound to `bound` advertises: advertise_tmpl
 * expanded, or when it is "" or NULL, bound itself with a tcp wildcard host
 * (*, 0.0.0.0, ::, [::]), which another host cannot connect to, replaced by
 * the host name. */
MUST_CHECK int hint_format_advertise(char *out, size_t size, const char *bound,
                                     const char *advertise_tmpl, const char *stage, Err *err);

/* Opens a publisher feeding the consumers of stage ("processor", "router",
 * "batchrouter"). static_endpoints: comma-separated endpoints always
 * connected (may be empty). With pool != NULL and discovery_interval_ms > 0
 * it also connects to every endpoint the instances table lists for the
 * stage (live rows with a hint_endpoint), asked every discovery_interval_ms
 * on an idle connection of pool (never holding one the caller waits for
 * longer than the query; the first lookup runs as soon as a connection is
 * idle), and disconnects endpoints that disappear. Connections are made
 * asynchronously: a consumer that is not up yet is reached once it is.
 * NULL on error (socket creation, or a static endpoint nanomsg refuses). */
HintPub *hint_pub_open(struct event_base *base, const char *stage, const char *static_endpoints,
                       DbPool *pool, int discovery_interval_ms, Err *err);
void hint_pub_close(HintPub *p);
/* Publishes topic (e.g. "gw" or "rt:<destination id>") to every connected
 * subscriber; never blocks (a subscriber that is slow or away drops it). */
void hint_pub_send(HintPub *p, const char *topic);
/* Endpoints currently connected (static and discovered). */
int hint_pub_peers(const HintPub *p);

/* Binds the endpoint expanded from bind_tmpl for stage and calls
 * on_hint(arg, topic) on base for each hint received. hint_sub_endpoint()
 * returns what hint_format_advertise() makes of it and advertise_tmpl.
 * NULL on error, e.g. the endpoint is in use by a live process. */
HintSub *hint_sub_open(struct event_base *base, const char *bind_tmpl, const char *advertise_tmpl,
                       const char *stage, void (*on_hint)(void *arg, const char *topic), void *arg,
                       Err *err);
/* Closes the socket and removes its ipc file. NULL is a no-op. */
void hint_sub_close(HintSub *s);
/* The endpoint producers should connect to (LeaseInfo.hint_endpoint);
 * borrowed, valid until hint_sub_close. "" for s == NULL. */
const char *hint_sub_endpoint(const HintSub *s);

#endif
