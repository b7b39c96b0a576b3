/* The router's delivery engine: claims rt jobs of the partitions this
 * instance leases, delivers them in per-user order per destination, records
 * failures in rt_retries and aborts in dead_letters, and advances the
 * router's cursors.
 * Owns the ordering state (order.c), the deliveries (sender.c) and the
 * modules of the database steps: the leased partitions and their cursors
 * (parts.c), claims (claim.c), loads from rt_retries (reload.c) and status
 * flushes (flush.c); engine.c schedules them on the caller's db pool (one
 * connection). Borrows the lease, the HTTP client and the metrics
 * registry. */
#ifndef ROUTER_ENGINE_H
#define ROUTER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/httpc.h"
#include "common/lease.h"
#include "common/metrics.h"
#include "common/wsconfig.h"
#include "common/ops.h"

struct event_base;

typedef struct Engine Engine;

/* Works only on partitions the lease lets it (lease_usable). ws (borrowed,
 * may be NULL): destination types for batching (sender.h). Never fails. */
Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                      Httpc *http, Metrics *m, WsWatcher *ws);
void engine_destroy(Engine *e);
/* Mode and paused destinations (common/ops.h, borrowed): degraded, it
 * claims and delivers nothing (what is in memory waits); a paused
 * destination's jobs wait in rt_retries, in order, no attempt counted. */
void engine_set_ops(Engine *e, const Ops *ops);
/* New rt jobs may be waiting (hint). */
void engine_kick(Engine *e);
/* The lease's usable set may have changed (its changed() callback). */
void engine_leases_changed(Engine *e);
/* Stops claiming and starting deliveries; waits for deliveries in flight
 * and flushes their outcomes (and writes every claimed job not delivered
 * to rt_retries, so the cursors pass all that was claimed); then done runs
 * (on the loop), and the caller frees the leases. Deliveries still in
 * flight after cancel_after_ms are cancelled and recorded as not delivered
 * (at least once: the partitions' next owner delivers them again). */
void engine_stop(Engine *e, int cancel_after_ms, void (*done)(void *arg), void *arg);
bool engine_ready(const Engine *e, char *detail, size_t size);

#endif
