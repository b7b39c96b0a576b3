/* The skeleton of a consuming service (processor, router, batchrouter):
 * everything their main() has in common, in one place. Owns the loop, the
 * stage's database pool (checked against the installed partitions), the
 * metrics registry, the partition leases (common/lease.h), the hint
 * subscriber, the /health and /metrics server and the signal handling.
 *
 * Life: configuration (svc_start), loop, db pool, hint subscriber, leases,
 * then ops->create builds the stage's own work object; the admin server
 * opens last and the stage logs ready. SIGTERM/SIGINT: ops->stop with the
 * stage's shutdown timeout; when it reports done, every lease is freed
 * (lease_leave) so other instances take over at once, and the process exits
 * 0 (the graceful stop is recorded first, common/ops.h, so it does not
 * count as a crash). A hard deadline (the shutdown timeout plus a second for the leave)
 * exits anyway; a second signal exits at once. A configuration error found
 * at run time (partitions differ from the schema) exits with
 * SVC_EXIT_CONFIG. */
#ifndef COMMON_STAGE_H
#define COMMON_STAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/err.h"
#include "common/lease.h"
#include "common/metrics.h"
#include "common/ops.h"

struct event_base;

/* What the skeleton gives the stage's create(); all owned by the skeleton
 * and valid until destroy() returned. */
typedef struct StageEnv {
    struct event_base *base;
    const Config *cfg;
    DbPool *pool; /* size 1: the stage's SQL runs on it, in order */
    Metrics *metrics;
    Lease *lease;
    /* mode (degraded: claim and forward nothing, stay leased and healthy)
     * and paused destinations; the stage's kick() runs when they change */
    const Ops *ops;
} StageEnv;

/* Per-stage settings the skeleton reads from the configuration. */
typedef struct StageSettings {
    const char *listen_address;
    int admin_port;
    int shutdown_timeout_ms;
} StageSettings;

typedef struct StageOps {
    const char *name; /* "processor", "router", "batchrouter" */
    void (*settings)(const Config *cfg, StageSettings *out);
    /* Builds the work object; NULL with err set on failure. */
    void *(*create)(const StageEnv *env, Err *err);
    void (*destroy)(void *work);
    /* A hint arrived. */
    void (*kick)(void *work);
    /* The usable set of leased partitions may have changed. */
    void (*leases_changed)(void *work);
    /* Stop within deadline_ms; done(arg) on the loop once nothing is in
     * progress on any partition. */
    void (*stop)(void *work, int deadline_ms, void (*done)(void *arg), void *arg);
    bool (*ready)(void *work, char *detail, size_t size);
    /* Extra words for the ready log line (may be NULL). */
    void (*describe)(void *work, char *out, size_t size);
} StageOps;

/* The whole main() of a stage: returns the process exit code. */
int stage_main(int argc, char **argv, const StageOps *ops);

#endif
