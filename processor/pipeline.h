/* The processor's work cycle: claim gw jobs -> destination transforms on the
 * transformer -> one transaction writing rt/batch_rt jobs, dead letters and
 * the advanced gw cursors (exactly-once hand-off).
 * Owns the claimed batch (processor/route.c, with a reference to the
 * workspace snapshot it was routed with), its transformer requests
 * (processor/transform.c), the in-memory cursors (processor/claim.c) and
 * the hand-off transaction's buffers (processor/commit.c); uses the caller's db pool (one connection, which holds
 * the stage's advisory lock), HTTP client (used by nothing else), hint
 * publishers and workspace watcher. */
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
/* Stops claiming. A batch being transformed is abandoned at once (retry
 * timers and transformer requests cancelled, nothing committed: it is
 * claimed again after a restart); a database step in progress may finish.
 * done runs when nothing is in progress, or at the latest after
 * processor.shutdown_timeout_ms (then a step still waiting on the database
 * is given up: the caller exits and closes the connection, and the cursors
 * say whether a COMMIT in flight happened). done may run before this
 * returns when the pipeline is idle. */
void pipeline_stop(Pipeline *p, void (*done)(void *arg), void *arg);
bool pipeline_ready(const Pipeline *p, char *detail, size_t size);

#endif
