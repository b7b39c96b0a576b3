/* The processor's work cycle: claim gw jobs of the partitions this instance
 * leases -> user transformations (where a destination has one) and
 * destination transforms on the transformer -> one fenced
 * transaction writing rt/batch_rt jobs, dead letters and the advanced gw
 * cursors (exactly-once hand-off).
 * Owns the claimed batch (processor/route.c, with a reference to the
 * workspace snapshot it was routed with), its transformer requests
 * (processor/transform.c), the in-memory cursors (processor/claim.c) and
 * the hand-off transaction's buffers (processor/commit.c); uses the
 * caller's db pool (one connection: all of the stage's SQL runs on it, in
 * order), partition leases (read, and told when a partition given back is
 * quiesced), HTTP client (used by nothing else), hint publishers and
 * workspace watcher. */
#ifndef PROCESSOR_PIPELINE_H
#define PROCESSOR_PIPELINE_H

#include <stdbool.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/httpc.h"
#include "common/lease.h"
#include "common/ops.h"
#include "common/metrics.h"
#include "common/wsconfig.h"

struct event_base;

typedef struct Pipeline Pipeline;

/* Everything is borrowed and must outlive the pipeline (the pool only until
 * pipeline_stop's done ran). Starts its cycle on the loop. */
Pipeline *pipeline_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                          Httpc *http, HintPub *rt_hints, HintPub *batch_hints, WsWatcher *ws,
                          Metrics *m);
void pipeline_destroy(Pipeline *p);
/* Wakes the cycle (a hint arrived or the poll timer fired). */
void pipeline_kick(Pipeline *p);
/* Degraded mode (common/ops.h, borrowed): while on, nothing is claimed. */
void pipeline_set_ops(Pipeline *p, const Ops *ops);
/* The lease's changed() callback: the usable set may differ. Partitions
 * being given back that no batch in flight touches are quiesced at once,
 * the others when their batch ends; the new set applies from the next
 * claim (cursors of partitions newly held are read first). */
void pipeline_leases_changed(Pipeline *p);
/* Stops claiming. A batch being transformed is abandoned at once (retry
 * timers and transformer requests cancelled, nothing committed: it is
 * claimed again by whoever holds its partitions next); a database step in
 * progress may finish. done runs when nothing is in progress, or at the
 * latest after processor.shutdown_timeout_ms (then a step still waiting on
 * the database is given up and the cursors say whether a COMMIT in flight
 * happened). Once done ran the pipeline never uses the pool again: the
 * caller may close it, which rolls back at once a transaction given up at
 * the deadline (an instance taking its partitions over waits for the lease
 * rows that transaction's fence holds). done may run before this returns
 * when the pipeline is idle. */
void pipeline_stop(Pipeline *p, void (*done)(void *arg), void *arg);
/* Ready when the database is reachable, with or without partitions (an
 * extra instance is a valid standby); detail says how many partitions its
 * lease makes usable now. */
bool pipeline_ready(const Pipeline *p, char *detail, size_t size);

#endif
