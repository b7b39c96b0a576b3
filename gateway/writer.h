/* Group-committed durable writes of gw jobs.
 * Owns the pending batch (COPY rows of accepted requests), the batches being
 * written, and which db connection each uses. Does not own the requests: it
 * calls each request's done callback exactly once, with 200 after COMMIT or
 * 503 when the rows could not be stored. Called by the HTTP layer.
 *
 * A batch is flushed as one transaction (lock partitions, COPY, COMMIT) when
 * a connection is idle and the batch is full, no other batch is being
 * written, or it has waited batch_max_wait_ms. While every connection is
 * busy, requests accumulate in the pending batch, so batches grow with load
 * (group commit). Memory is bounded by max_backlog_events: beyond it,
 * requests are refused at once (503) instead of queued. */
#ifndef GATEWAY_WRITER_H
#define GATEWAY_WRITER_H

#include <stdbool.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/metrics.h"
#include "gateway/ingest.h"

struct event_base;

typedef struct Writer Writer;

/* status: 200 stored, 503 not stored; msg is the reply body for 503. */
typedef void (*WriterDoneCb)(void *arg, int status, const char *msg);

Writer *writer_create(struct event_base *base, const Config *cfg, DbPool *pool, HintPub *hints,
                      Metrics *metrics);
void writer_destroy(Writer *w);
/* Appends the request's rows (copied from in) to the pending batch; done
 * runs later. Returns -1 with *why set (the 503 body) when the writer is
 * draining, no database connection is up, or the backlog is full; then done
 * never runs. */
MUST_CHECK int writer_submit(Writer *w, IngestOut *in, WriterDoneCb done, void *arg,
                             const char **why);
/* Events accepted but not yet committed. */
int writer_backlog(const Writer *w);
/* Stops accepting; flushes what is pending. idle_cb runs once nothing is pending or in flight. */
void writer_drain(Writer *w, void (*idle_cb)(void *arg), void *arg);
/* Fails everything still pending or in flight with 503 (shutdown timeout). */
void writer_abort(Writer *w);
bool writer_db_ready(const Writer *w);

#endif
