/* The router's side of the transformer's POST /batch (RudderStack's BATCH
 * transform) and POST /routerTransform (its ROUTER_TRANSFORM): the request
 * for a group of ready rt jobs of one destination ({destType, input:
 * [{message, metadata, destination}]}, message being a delivery payload
 * for /batch, the event itself for /routerTransform) and the answer's
 * items (delivery payloads and the job ids they carry, or a refusal with a
 * status and error; /routerTransform wraps the items in {"output": [...]}).
 * Pure: unit-tested; the HTTP and the outcomes are sender.c's. */
#ifndef ROUTER_BATCH_H
#define ROUTER_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "router/order.h"

/* One item of the answer. */
typedef struct BatchOut {
    char **requests; /* delivery payloads (JSON text) to send; none when refused */
    int nrequests;
    int status;       /* statusCode; 200 when absent or 0, as RudderStack reads it */
    char *error;      /* error text, or NULL */
    int64_t *job_ids; /* metadata[].jobId */
    int njobs;
} BatchOut;

/* Appends the request body for jobs[0..n-1] (one destination: dest_type is
 * its destinationDefinition.name, dest_json its destination object); the
 * jobs' metadata says transformAt "router" for /routerTransform. */
void batch_format_request(Buf *out, const char *dest_type, const char *dest_json,
                          OrderJob *const *jobs, int n, bool router_transform);
/* Parses the answer (a JSON array of items; for /routerTransform an object
 * whose "output" is that array). On success *outs (caller frees with
 * batch_outs_free) and *nouts are set. Fails on text that is not such an
 * answer, or an item without a metadata array. */
MUST_CHECK int batch_parse_answer(const char *text, size_t len, bool router_transform,
                                  BatchOut **outs, int *nouts, Err *err);
void batch_outs_free(BatchOut *outs, int n);

/* The transformer's delivery proxy (POST /v1/destinations/<type>/proxy,
 * RudderStack's v1 contract). Appends the request body: the delivery
 * payload's members plus "metadata" (one entry per job) and
 * "destinationConfig" (the destination's Config object text, or {}). */
void batch_format_proxy(Buf *out, const char *payload, OrderJob *const *jobs, int n,
                        const char *dest_config);
/* The status the proxy's answer gives job_id: output.response[] entry of
 * that jobId (its statusCode, and error into why), else the answer's
 * output.status, else http_status. */
long batch_proxy_status(const char *body, size_t len, int64_t job_id, long http_status, Buf *why);

#endif
