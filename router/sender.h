/* Deliveries: takes the jobs the ordering state machine says are ready,
 * sends them with the shared HTTP client (bounded per destination by
 * order.c), and turns each answer into an outcome: ok, retry at a time the
 * retry policy sets, or abort into a dead letter. Owns the deliveries in
 * flight and the per-destination delivery metrics; borrows the order state,
 * the HTTP client and the metrics registry. Runs on the engine's loop. */
#ifndef ROUTER_SENDER_H
#define ROUTER_SENDER_H

#include <stdbool.h>

#include "common/cfg.h"
#include "common/httpc.h"
#include "common/metrics.h"
#include "common/wsconfig.h"
#include "common/ops.h"
#include "router/order.h"

struct event_base;

typedef struct Sender Sender;

/* after(arg) runs (on the loop) whenever a delivery ended, so the caller
 * can start more work. ws (borrowed, may be NULL) names the destination
 * types of jobs: those of router.batch_destination_types go through the
 * transformer's /batch (ready jobs of a destination are grouped up to
 * router.batch_max_jobs or router.batch_max_wait_ms; a merged request's
 * answer is every listed job's outcome); jobs of a transformAt router
 * destination (their payload is the event) go through /routerTransform
 * the same way (router.router_transform_max_jobs, _max_wait_ms), and each
 * delivery payload it returns is sent (through the proxy where
 * configured). Never fails. */
Sender *sender_create(struct event_base *base, const Config *cfg, Httpc *http, Metrics *m,
                      Order *order, WsWatcher *ws, void (*after)(void *arg), void *arg);
/* Abandons deliveries still in flight (their jobs are marked lost); the
 * HTTP client must be destroyed after this without running callbacks.
 * NULL is a no-op. */
void sender_destroy(Sender *s);
/* Paused destinations (borrowed; NULL: none). */
void sender_set_ops(Sender *s, const Ops *ops);
/* Starts a delivery for every job order_take_ready gives (a paused
 * destination's job is put back as a retry due in SENDER_PAUSED_RECHECK_MS,
 * no attempt counted). Returns how many. */
int sender_dispatch(Sender *s);
/* While on, answers to deliveries in flight are not recorded: the jobs
 * count as not delivered (state is being dropped, or shutting down). */
void sender_discard(Sender *s, bool on);
/* Ends every delivery in flight now, recording nothing (shutdown deadline:
 * at least once, they are delivered after a restart). Returns how many. */
int sender_cancel(Sender *s);
int sender_inflight(const Sender *s);

#endif
