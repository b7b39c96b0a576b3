/* Ingestion: turns one request body into enriched events encoded as jobs.
 * Pure and synchronous (no I/O), so it is unit-tested and fuzzed directly.
 * Owns nothing beyond the IngestOut the caller provides. Called by the HTTP
 * layer for every ingestion endpoint.
 *
 * A body is accepted only if it is strict JSON (RFC 8259) that a UTF8
 * Postgres database and every JSON parser downstream accept as it is:
 * well-formed UTF-8, no raw control characters in strings, no lone
 * surrogate escapes, no NaN/Infinity, no numbers outside the JSON grammar.
 * Each event is stored as the client's own text with the enrichment spliced
 * in (not re-serialised), so numbers of any size and precision, key order
 * and escapes are kept exactly as sent. */
#ifndef GATEWAY_INGEST_H
#define GATEWAY_INGEST_H

#include <stddef.h>

#include "common/buf.h"

typedef enum IngestKind {
    INGEST_BATCH,
    INGEST_TRACK,
    INGEST_IDENTIFY,
    INGEST_PAGE,
    INGEST_SCREEN,
    INGEST_GROUP,
    INGEST_ALIAS,
    INGEST_IMPORT, /* same body as batch */
} IngestKind;

/* The RudderStack message type of a single-event endpoint, or NULL for batch/import. */
const char *ingest_kind_type(IngestKind k);

typedef struct IngestCtx {
    const char *workspace_id;
    const char *source_id;
    const char *received_at; /* RFC 3339 with milliseconds, UTC */
    const char *request_ip;
    int partitions;
} IngestCtx;

struct IngestScan;

typedef struct IngestOut {
    Buf rows;   /* COPY text rows for the gw queue, one per event */
    int *parts; /* partition of each event */
    int nevents;
    int cap;
    struct IngestScan *scan; /* scratch reused across requests; private */
} IngestOut;

void ingest_out_init(IngestOut *o);
void ingest_out_reset(IngestOut *o);
void ingest_out_deinit(IngestOut *o);

/* Messages of the rejections, as RudderStack words them. */
#define INGEST_MSG_INVALID_JSON "invalid json"
#define INGEST_MSG_NO_IDENTITY  "request neither has anonymousId nor userId"
#define INGEST_MSG_EMPTY_BATCH  "empty batch payload"

/* Longest stored ordering key (user_id column), in bytes; longer ids are
 * cut on a character boundary (the payload keeps the whole id). */
#define INGEST_MAX_USER_KEY 511

/* Parses body for kind and appends one row per event to out. Returns 200 on
 * success, or 400 with *msg set to one of INGEST_MSG_*; on failure out holds
 * no row of this request (all events of a request or none). Every row is
 * valid UTF-8 without NUL bytes, in COPY text format (6 fields). */
int ingest_parse(IngestKind kind, const char *body, size_t len, const IngestCtx *ctx,
                 IngestOut *out, const char **msg);

/* Builds the JSON body of a pixel request from its query string
 * (a=b&c.d=e: dotted keys nest) for type "track" or "page". Returns a heap
 * string the caller frees. */
char *ingest_pixel_body(const char *query);

/* Formats the current time as RFC 3339 UTC with milliseconds. */
void ingest_format_now(char out[32]);

#endif
