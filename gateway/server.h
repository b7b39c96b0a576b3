/* The gateway's HTTP server (libevent evhttp): routes, authentication,
 * body decoding, rate limits and replies. Owns the evhttp instance, its
 * listening socket and per-request state; uses the Writer to store events
 * and the WsWatcher to resolve write keys. Called from gateway/main.c. */
#ifndef GATEWAY_SERVER_H
#define GATEWAY_SERVER_H

#include "common/cfg.h"
#include "common/err.h"
#include "common/metrics.h"
#include "common/wsconfig.h"
#include "gateway/mshare.h"
#include "gateway/writer.h"

struct event_base;

typedef struct Server Server;

/* Binds cfg->gateway.listen_address:port (SO_REUSEPORT) and starts serving. */
Server *server_create(struct event_base *base, const Config *cfg, Writer *writer, WsWatcher *ws,
                      Metrics *metrics, Err *err);
void server_destroy(Server *s);
/* With several workers: /metrics shows every worker's snapshot in share
 * (borrowed, outlives s), this one being worker. */
void server_share_metrics(Server *s, MetricsShare *share, int worker);
/* Stops accepting connections; ingestion requests still arriving on open
 * connections get 503 "shutting down". done runs once every accepted request
 * has been answered. */
void server_drain(Server *s, void (*done)(void *arg), void *arg);
/* The port actually bound (useful when configured as 0). */
int server_port(const Server *s);

#endif
