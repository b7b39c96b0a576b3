/* The batchrouter's work: batch_rt jobs of the leased partitions, grouped
 * per connection (source, destination), uploaded to object storage or
 * loaded into a Postgres warehouse (see the design comment in engine.c).
 * Owns the connections' state, the workspace watcher, the warehouse worker
 * threads and the queue of SQL it runs on the stage's db connection. Does
 * not own the loop, the pool, the lease, the Httpc or the metrics. Called
 * by batchrouter/main.c, on the loop. */
#ifndef BATCHROUTER_ENGINE_H
#define BATCHROUTER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/err.h"
#include "common/httpc.h"
#include "common/lease.h"
#include "common/metrics.h"

struct event_base;
typedef struct Engine Engine;

/* NULL with err set when the workspace config cannot be loaded. */
Engine *engine_create(struct event_base *base, const Config *cfg, DbPool *pool, Lease *lease,
                      Httpc *http, Metrics *metrics, Err *err);
void engine_destroy(Engine *e);
void engine_kick(Engine *e);
void engine_leases_changed(Engine *e);
/* Plans nothing more; done(arg) once no batch is in flight (uploads still
 * running after deadline_ms are cancelled: their batches stay journaled). */
void engine_stop(Engine *e, int deadline_ms, void (*done)(void *), void *arg);
bool engine_ready(Engine *e, char *detail, size_t size);

#endif
