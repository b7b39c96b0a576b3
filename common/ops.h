/* Operations state of a consuming stage (processor, router, batchrouter),
 * sql/010_mode.sql. Owns its own one-connection db pool (so a poll never
 * waits behind the stage's work), its timers and the metrics series below;
 * borrows the config, the lease (which partitions this instance holds) and
 * the metrics registry. Created by the stage skeleton (common/stage.c).
 *
 *  - At start it records the start (starts table); a graceful stop records
 *    the stop (ops_leave). Every ops.poll_interval_ms it runs the automatic
 *    degraded trigger (check_restarts), reads the mode and the paused
 *    destinations; changed() runs when either changed.
 *  - Every ops.stats_interval_ms it computes, for the partitions this
 *    instance leases, pending jobs and lag per destination from the cursors
 *    (queue_stats: at most ops.stats_cap rows per partition, through the
 *    (partition, job_id) index; nothing is counted per scrape), the router's
 *    retrying and parked rows, and the global gauges (datasets, dead
 *    letters, database size). Instances of a stage export disjoint
 *    partitions, so sum() over instances is the stage's total; the global
 *    gauges are the same on every instance (use max()).
 * Until the first poll answered the mode is "unknown" and ops_degraded()
 * is true: a stage starting while degraded never forwards a job first. */
#ifndef COMMON_OPS_H
#define COMMON_OPS_H

#include <stdbool.h>

#include "common/cfg.h"
#include "common/lease.h"
#include "common/metrics.h"

struct event_base;

typedef struct Ops Ops;

/* stage: "processor", "router" or "batchrouter". Never fails. */
Ops *ops_create(struct event_base *base, const Config *cfg, const char *stage, Lease *lease,
                Metrics *m, void (*changed)(void *arg), void *arg);
void ops_destroy(Ops *o);
/* Degraded mode: stop forwarding (claim nothing, deliver nothing). NULL: false. */
bool ops_degraded(const Ops *o);
/* An operator paused this destination: deliver nothing to it. NULL: false. */
bool ops_paused(const Ops *o, const char *destination_id);
/* "normal", "degraded" or "unknown" (not read yet), and the reason of the
 * last change (borrowed). */
const char *ops_mode(const Ops *o);
const char *ops_reason(const Ops *o);
/* Graceful stop: records it (the start is not a crash), then done(arg) on
 * the loop; at once if the database cannot be reached. */
void ops_leave(Ops *o, void (*done)(void *arg), void *arg);

#endif
