/* Group-committed durable writes of gw jobs.
 * Owns the pending batch (COPY rows of accepted requests), the batches being
 * written, retried or verified, and which db connection each uses. Does not
 * own the requests: it calls each request's done callback exactly once: 200
 * after COMMIT, 400 when the database refused that request's own rows, 503
 * when the rows could not be stored. Called by the HTTP layer.
 *
 * A batch is flushed as one transaction (lock partitions, COPY, COMMIT) when
 * a connection is idle and the batch is full, no other batch is being
 * written, or it has waited batch_max_wait_ms. While every connection is
 * busy, or none is up (reconnecting), requests accumulate in the pending
 * batch, so batches grow with load (group commit). Each request waits at
 * most db_retry_ms from its arrival for a successful write; memory is
 * bounded by max_backlog_events and max_backlog_bytes: beyond them requests
 * are refused at once (503) instead of queued.
 *
 * No request can fail another's write: a batch whose COPY fails for a data
 * reason (SQLSTATE class 22, 23 or 54) is split in halves by request and
 * each half written again, until the requests whose rows the database
 * refuses are alone; they get 400, everything else is committed.
 *
 * An interrupted COMMIT is never rewritten blindly: every write takes its
 * transaction id before any COPY data is sent, and a write whose connection
 * fails after that asks another connection for pg_xact_status(xid):
 * committed -> 200, aborted -> written again, in progress -> the old backend
 * is terminated and the status asked again, no answer within
 * commit_verify_ms -> 503 (the batch may then be stored). */
#ifndef GATEWAY_WRITER_H
#define GATEWAY_WRITER_H

#include <stdbool.h>
#include <stddef.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/metrics.h"
#include "gateway/ingest.h"

struct event_base;

typedef struct Writer Writer;

/* Body of the 400 answered to a request whose rows the database refused. */
#define WRITER_MSG_REFUSED "invalid json"

/* status: 200 stored, 400 refused by the database, 503 not stored; msg is
 * the reply body. */
typedef void (*WriterDoneCb)(void *arg, int status, const char *msg);

Writer *writer_create(struct event_base *base, const Config *cfg, DbPool *pool, HintPub *hints,
                      Metrics *metrics);
void writer_destroy(Writer *w);
/* Appends the request's rows (copied from in) to the pending batch; done
 * runs later. Returns 0, or an HTTP status with *why set (the body) when
 * the request is refused now and done never runs: 503 when the writer is
 * draining or the backlog is full, 413 when the request alone is larger
 * than the backlog may ever hold (it could never be stored). */
MUST_CHECK int writer_submit(Writer *w, IngestOut *in, WriterDoneCb done, void *arg,
                             const char **why);
/* Events accepted but not yet answered. */
int writer_backlog(const Writer *w);
/* Runs cb once, from the loop, as soon as a database connection is up
 * (connected and schema-checked): the gateway is ready then. */
void writer_on_ready(Writer *w, void (*cb)(void *arg), void *arg);
/* Stops accepting; flushes what is pending. idle_cb runs once nothing is pending or in flight. */
void writer_drain(Writer *w, void (*idle_cb)(void *arg), void *arg);
/* Fails everything still pending or in flight with 503 (shutdown timeout). */
void writer_abort(Writer *w);
bool writer_db_ready(const Writer *w);

#endif
