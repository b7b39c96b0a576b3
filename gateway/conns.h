/* Client connections of the gateway's HTTP server: limits evhttp (libevent
 * 2.1) does not have. Owns per-connection tracking state, a sweep timer and
 * the enabling of the listening socket; the connections themselves belong
 * to evhttp. Used by gateway/server.c.
 *
 * - At most max_connections are open: beyond it the listener is disabled and
 *   new connections wait in the kernel's listen queue.
 * - A request must arrive completely within request_timeout_ms of its first
 *   byte (evhttp's own timeouts restart on every read, so a client sending a
 *   byte every few seconds would hold a connection forever).
 * - Bytes of requests still being received, all connections together, are
 *   bounded by max_partial_request_bytes: beyond it a connection whose
 *   request has passed 64 KiB stops being read until requests complete
 *   (smaller requests always proceed, so large slow bodies cannot stall
 *   ordinary events).
 * - accept() failing for lack of descriptors (EMFILE) disables the listener
 *   for a growing delay (logged once per episode) instead of spinning.
 *
 * How: evhttp creates each connection's bufferevent through our bevcb; we
 * keep a reference to it and watch its input buffer (bytes read). evhttp
 * frees it when the connection closes, which the sweep notices (its
 * callbacks are cleared) before dropping our reference, which closes the
 * socket. A connection over its deadline gets the event evhttp's own read
 * timeout would deliver, so evhttp frees it. */
#ifndef GATEWAY_CONNS_H
#define GATEWAY_CONNS_H

#include "common/cfg.h"
#include "common/metrics.h"

struct event_base;
struct evhttp;
struct evhttp_request;
struct evconnlistener;

typedef struct Conns Conns;

/* Installs itself on http (evhttp_set_bevcb) and on the listener (error
 * callback). max_connections is the effective limit (see
 * conns_default_limit). Never fails. */
Conns *conns_create(struct event_base *base, struct evhttp *http, struct evconnlistener *l,
                    const GatewayConfig *cfg, int max_connections, Metrics *metrics);
/* Call after evhttp_free (which frees the connections). */
void conns_destroy(Conns *c);
/* The request handler calls this first: req's connection has read a whole
 * request, so its deadline and its partial bytes end here. */
void conns_request_read(Conns *c, struct evhttp_request *req);
/* The reply to req is being sent (after this, its connection is idle once
 * the reply is written, unless a next request arrives). */
void conns_reply_started(Conns *c, struct evhttp_request *req);
/* Drain: closes every idle connection now and each one that becomes idle
 * later, so a client or proxy holding keep-alive connections (nginx) opens a
 * new one, which the closed listener refuses, and goes elsewhere, instead of
 * sending requests that could only be refused. Returns how many it closed. */
int conns_drain(Conns *c);
/* The listener is about to be freed (drain): never touch it again. */
void conns_forget_listener(Conns *c);
/* Connections open now. */
int conns_open(const Conns *c);
/* Connections receiving a request now (its first bytes read, not all). */
int conns_reading(const Conns *c);
/* The descriptor limit minus what the process needs besides clients. */
int conns_default_limit(int db_pool_size, int *fd_limit);

#endif
