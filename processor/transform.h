/* Transformer requests of one claimed batch: destination transforms (POST
 * /v0/destinations/<type>, DESIGN §2) or, in a batch made with
 * tf_batch_create_user, user transformations (POST /customTransform), whose
 * outputs go to a callback (the next stage) instead of the OutputList.
 * Owns the batch's chunks (their request bodies and retry timers) and the
 * requests in flight on the caller's Httpc, which nothing else uses (so
 * tf_batch_abandon may cancel all of its transfers). Borrows the workspace
 * snapshot's sources and destinations and the events' texts: the pipeline
 * holds both until it destroys the batch. Answers are appended to the
 * caller's OutputList. Runs on the loop; never blocks. */
#ifndef PROCESSOR_TRANSFORM_H
#define PROCESSOR_TRANSFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cfg.h"
#include "common/httpc.h"
#include "common/metrics.h"
#include "common/wsconfig.h"
#include "processor/outputs.h"

struct event_base;

/* One event for one destination. Strings are borrowed for the batch. */
typedef struct TfEvent {
    int job; /* index of the gw job in the batch */
    int seq; /* destination order, for outputs_order */
    int64_t job_id;
    const char *text; /* the event sent (the normalised one, or a user transformation's output) */
    size_t text_len;
    const char *dead_text; /* dead-letter payload (the gw event); NULL: text */
    const char *workspace_id, *user_id, *type;
    const char *message_id; /* may be NULL */
    /* metadata (RudderStack's JobMetadataT), each may be NULL */
    const char *rudder_id, *received_at, *event_name;
    int64_t created_at_ms; /* the gw job's */
} TfEvent;

/* A user transformation's output event for gw job `job` (destination order
 * seq) and destination d: out[0..len) is a JSON object, valid only during
 * the call. */
typedef void (*TfUserOutputFn)(void *arg, int job, int seq, const WsDestination *d, const char *out,
                               size_t len);

typedef struct TfMetrics {
    MetricSeries *seconds; /* request latency histogram */
    MetricSeries *retries; /* requests retried */
    MetricSeries *splits;  /* chunks split because the answer was too large */
    MetricSeries *errors[4]; /* requests not answered 200, by status class 2xx..5xx (none: 5xx) */
    Metrics *registry;       /* per-destination retries: pintle_retries_total{stage="processor"} */
} TfMetrics;

typedef struct TfBatch TfBatch;

/* Caller frees with tf_batch_destroy; m and outs are borrowed for its life. */
TfBatch *tf_batch_create(struct event_base *base, const ProcessorConfig *cfg, Httpc *http,
                         const TfMetrics *m, OutputList *outs);
/* The same for user transformations (POST /customTransform, header
 * X-Feature-Filter-Code: ?1, timeout processor.user_transform_timeout_ms):
 * each 200 output goes to on_output, matched to its input by
 * metadata.jobId, else metadata.messageId, else (a transformBatch output
 * without them) the last input of its group named in metadata.messageIds,
 * else the group's last input; an input with no output or a 298 is
 * filtered (outputs_add_user_filtered); any other status is a dead letter
 * with reason DEAD_USER_TRANSFORMATION. HTTP 809 (code fetch failed) is
 * retried like a 5xx. A chunk never separates outputs of one gw job. */
TfBatch *tf_batch_create_user(struct event_base *base, const ProcessorConfig *cfg, Httpc *http,
                              const TfMetrics *m, OutputList *outs, TfUserOutputFn on_output,
                              void *arg);
/* Frees the chunks. Callbacks of requests still in flight must not run
 * afterwards: call it once done ran, or at teardown before httpc_destroy
 * (which ends transfers without callbacks). */
void tf_batch_destroy(TfBatch *b);

/* Adds ev to the open chunk of destination d of source s (a new chunk
 * every processor.transform_chunk events). Only before tf_batch_start. */
void tf_batch_add(TfBatch *b, const WsSource *s, const WsDestination *d, const TfEvent *ev);
int tf_batch_chunks(const TfBatch *b);

/* Sends the chunks, up to processor.max_inflight at once. Transport
 * errors, 5xx, 408 and 429 are retried with capped backoff for as long as
 * it takes; an answer over processor.max_transformer_response_bytes splits
 * its chunk in halves (a single event's is a dead letter); any other
 * answer becomes outputs (per-event statusCode) or dead letters (a
 * whole-request 4xx). done runs once, later, from the loop (never inside
 * a tf_batch_* call): complete is true when every event has its outputs,
 * false after tf_batch_abandon. */
void tf_batch_start(TfBatch *b, void (*done)(void *arg, bool complete), void *arg);

/* Gives the batch up (shutdown): sends nothing more, cancels retry timers
 * and every request in flight; done(arg, false) follows once the cancelled
 * requests have reported back. */
void tf_batch_abandon(TfBatch *b);

#endif
