/* The router's delivery engine: claims rt jobs, delivers them in per-user
 * order per destination, records failures in rt_retries and aborts in
 * dead_letters, and advances the router's cursors.
 * Owns the ordering state (order.c), the deliveries (sender.c) and the
 * modules of the database steps: the term under the stage lock (term.c),
 * claims (claim.c), loads from rt_retries (reload.c) and status flushes
 * (flush.c); engine.c schedules them on the caller's db pool (one
 * connection, which holds the stage lock). Borrows the HTTP client and
 * metrics registry. */
#ifndef ROUTER_ENGINE_H
#define ROUTER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/httpc.h"
#include "common/metrics.h"

struct event_base;

typedef struct Engine Engine;

Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Httpc *http,
                      Metrics *m);
void engine_destroy(Engine *e);
/* New rt jobs may be waiting (hint). */
void engine_kick(Engine *e);
/* Stops claiming and starting deliveries; waits for deliveries in flight
 * and flushes their outcomes; then done runs (on the loop). Deliveries
 * still in flight after cancel_after_ms are cancelled and recorded as not
 * delivered (at least once: the next term delivers them again). */
void engine_stop(Engine *e, int cancel_after_ms, void (*done)(void *arg), void *arg);
bool engine_ready(const Engine *e, char *detail, size_t size);

#endif
