/* Routing of one claimed batch: turns the claim's rows into gw jobs and
 * sends each to the destinations it goes to, under one workspace snapshot:
 * user-transformation chunks (a destination with a transformation), then
 * destination-transform chunks (processor/transform.c), batch_rt outputs,
 * or dead letters (processor/outputs.h names the reasons).
 * Owns the batch's jobs (their ids and normalised texts), the texts of
 * user-transformed events, its outputs and its reference to the snapshot,
 * all until route_batch_reset. Borrows the transform batches it adds
 * chunks to. Used by the pipeline (claim) and the
 * commit (which reads the jobs and outputs). */
#ifndef PROCESSOR_ROUTE_H
#define PROCESSOR_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/wsconfig.h"
#include "processor/outputs.h"
#include "processor/transform.h"

/* One claimed gw job. Strings are owned by the batch. */
typedef struct Job {
    int64_t job_id;
    int partition;
    char *workspace_id, *source_id, *user_id;
    char *dest_id; /* a replayed job's one destination, else NULL */
    char *text;    /* normalised event, serialised; the tree is freed after routing */
    size_t text_len;
    char *type;
    char *message_id;
    char *rudder_id, *received_at, *event_name; /* for the metadata; may be NULL */
    int64_t created_at_ms;
} Job;

typedef struct Batch {
    Job *jobs;
    int njobs;
    const Workspace *snap; /* held (ws_watcher_ref) until route_batch_reset */
    OutputList outs;
    char **ut_texts; /* user-transformed events sent on to destination transforms */
    int nut, caput;
} Batch;

void route_batch_init(Batch *b);
void route_batch_deinit(Batch *b);
/* Forgets the jobs and outputs and drops the snapshot. A transform batch
 * that borrows them must be destroyed first. */
void route_batch_reset(Batch *b);

/* Loads the rows of a claim (columns of jobq_format_claim) into the empty
 * batch b and routes each job with snapshot snap (b takes that reference):
 * events for a destination with a user transformation go to ut, the others
 * for destination transforms to tf; both keep pointers into b until they
 * are destroyed. Parses one event at a time, so only one JSON tree is alive
 * whatever the batch size. now_ms: the time normalisation's "now". */
void route_batch_load(Batch *b, const PGresult *res, const Workspace *snap, TfBatch *ut,
                      TfBatch *tf, int64_t now_ms);

/* One output of job's user transformation for destination d (ut's
 * TfUserOutputFn): a batch destination gets it as a batch_rt job, any other
 * goes to tf (not started yet) for its destination transform, its dead
 * letters carrying the gw event. out is copied. */
void route_user_output(Batch *b, TfBatch *tf, int job, int seq, const WsDestination *d,
                       const char *out, size_t len);

#endif
