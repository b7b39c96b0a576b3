/* The processor's work cycle: claim gw jobs -> destination transforms on the
 * transformer -> one transaction writing rt/batch_rt jobs, dead letters and
 * the advanced gw cursors (exactly-once hand-off).
 * Owns the claimed batch, the transformer requests in flight and the
 * in-memory cursors; uses the caller's db pool (one connection, which holds
 * the stage's advisory lock), HTTP client, hint publisher, workspace watcher. */
#ifndef PROCESSOR_PIPELINE_H
#define PROCESSOR_PIPELINE_H

#include <stdbool.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/httpc.h"
#include "common/metrics.h"
#include "common/wsconfig.h"

struct event_base;

typedef struct Pipeline Pipeline;

Pipeline *pipeline_create(struct event_base *base, const Config *cfg, DbPool *pool, Httpc *http,
                          HintPub *rt_hints, HintPub *batch_hints, WsWatcher *ws, Metrics *m);
void pipeline_destroy(Pipeline *p);
/* Wakes the cycle (a hint arrived or the poll timer fired). */
void pipeline_kick(Pipeline *p);
/* Stops claiming; done runs when no batch is in progress (its commit either
 * happened or the batch is abandoned uncommitted, to be claimed again). */
void pipeline_stop(Pipeline *p, void (*done)(void *arg), void *arg);
bool pipeline_ready(const Pipeline *p, char *detail, size_t size);

#endif
