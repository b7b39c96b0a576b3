/* The outputs of one claimed batch: rt and batch_rt jobs, filtered events
 * and dead letters, each tagged with the gw job and destination it came
 * from, and the order they are written in.
 * Owns the output records, their payload texts (one buffer for the whole
 * batch, so no allocation per output) and their error texts. Borrows
 * destination ids (the batch holds its workspace snapshot) and dead-letter
 * payloads (the batch's job texts): both must stay valid until
 * outputs_reset. Used by the pipeline (routing, commit) and the transform
 * module (transformer answers). */
#ifndef PROCESSOR_OUTPUTS_H
#define PROCESSOR_OUTPUTS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

/* Why an event became a dead letter: the label of
 * pintle_processor_dead_letters_total{reason=...}. */
typedef enum DeadReason {
    DEAD_TRANSFORMER,         /* the transformer rejected it (its statusCode and error) */
    DEAD_UNKNOWN_SOURCE,      /* the job's source is not in the workspace snapshot */
    DEAD_UNKNOWN_DESTINATION, /* a replayed job's destination is not in the snapshot */
    DEAD_UNPARSABLE,          /* the payload is not a JSON object */
    DEAD_NO_TYPE,             /* the event has no string "type" */
    DEAD_USER_TRANSFORMATION, /* the user transformation failed it (/customTransform's status
                               * and error); its dead letter's stage is user_transformation */
    DEAD_ANSWER_TOO_LARGE,    /* the event's own answer is over the response limit */
    DEAD_NREASONS
} DeadReason;

const char *outputs_reason_label(DeadReason r);

/* Longest error text kept for a dead letter (bytes of input; cut on a
 * character boundary). */
#define OUTPUTS_MAX_ERROR_BYTES 1000

typedef enum OutputKind { OUTPUT_RT, OUTPUT_BATCH_RT, OUTPUT_FILTERED, OUTPUT_DEAD } OutputKind;

typedef struct Output {
    int job; /* index of the gw job in the batch */
    int seq; /* destination order within the job's source */
    OutputKind kind;
    const char *dest_id;      /* borrowed; "" for a dead letter of a whole job */
    size_t off, len;          /* rt/batch_rt payload: bytes in OutputList.text */
    const char *dead_payload; /* dead letter: the event (borrowed) */
    int status;               /* dead letter: status code */
    bool by_user;             /* filtered: by the user transformation, not the destination's */
    DeadReason reason;        /* dead letter */
    char *error;              /* dead letter: valid UTF-8 without NUL (owned) */
} Output;

typedef struct OutputList {
    Output *v;
    int n, cap;
    Buf text;
    int *order; /* outputs_order's result */
    int order_cap;
} OutputList;

void outputs_init(OutputList *l);
void outputs_deinit(OutputList *l);
/* Forgets every output (keeps the allocations for the next batch). */
void outputs_reset(OutputList *l);

/* An rt (batch false) or batch_rt job with a copy of payload[0..len). */
void outputs_add_job(OutputList *l, int job, int seq, const char *dest_id, bool batch,
                     const char *payload, size_t len);
/* An event the transformer filtered (statusCode 298): nothing is written. */
void outputs_add_filtered(OutputList *l, int job, int seq, const char *dest_id);
/* An event the user transformation dropped (298, or no output for it). */
void outputs_add_user_filtered(OutputList *l, int job, int seq, const char *dest_id);
/* A dead letter. error[0..error_len) may be any bytes: it is kept cut to
 * OUTPUTS_MAX_ERROR_BYTES on a character boundary, with invalid UTF-8 and
 * NUL escaped (\xHH), so the row can always be stored. payload is borrowed. */
void outputs_add_dead(OutputList *l, int job, int seq, const char *dest_id, int status,
                      DeadReason reason, const char *error, size_t error_len, const char *payload);

/* The payload of an rt/batch_rt output (valid until the next add or reset). */
const char *outputs_payload(const OutputList *l, const Output *o);

/* Indices of the outputs in write order: gw job, then destination order,
 * then the order they were added (so several outputs of one event keep the
 * order of the transformer's answer). A stable counting sort: O(n + njobs +
 * largest seq), no comparisons. Valid until the next add or reset. jobs
 * and seqs must be >= 0, jobs < njobs. */
const int *outputs_order(OutputList *l, int njobs);

#endif
