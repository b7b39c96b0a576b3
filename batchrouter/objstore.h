/* Object storage destinations (S3, MINIO, DIGITAL_OCEAN_SPACES): where a
 * batch goes (ObjTarget, parsed from the destination's RudderStack config),
 * its object key, its gzip JSON Lines body, and the signed PUT. Owns only
 * the ObjTarget strings (objstore_target_deinit). The PUT runs on the
 * caller's Httpc (the loop's curl multi), signed by libcurl with AWS SigV4;
 * the payload's SHA-256 is sent as x-amz-content-sha256 and signed too.
 * Used by batchrouter/engine.c. */
#ifndef BATCHROUTER_OBJSTORE_H
#define BATCHROUTER_OBJSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/httpc.h"

typedef struct ObjTarget {
    char *base_url;   /* "http://host:port" (path-style: /bucket/key follows) */
    bool virtual_host; /* https://bucket.host/key instead */
    char *bucket;
    char *prefix;     /* without leading or trailing '/', may be "" */
    char *region;
    char *access_key_id;
    char *secret;
    bool sse;         /* x-amz-server-side-encryption: AES256 */
} ObjTarget;

/* True for the destination types this module uploads to. */
bool objstore_is_type(const char *def_name);

/* Fills t from a destination of type def_name with config (RudderStack's
 * keys: MINIO endPoint, bucketName, accessKeyID, secretAccessKey, prefix,
 * useSSL; S3 bucketName, prefix, accessKeyID, accessKey, region, enableSSE
 * and an optional endPoint; DIGITAL_OCEAN_SPACES endPoint, bucketName,
 * accessKeyID, accessKey, prefix, region). s3_override: base URL for S3
 * without its own endPoint ("" for AWS). ERR_INVALID when a required key is
 * missing; t is then untouched. */
MUST_CHECK int objstore_target_parse(ObjTarget *t, const char *def_name, json_object *config,
                                     const char *s3_override, Err *err);
void objstore_target_deinit(ObjTarget *t);

/* Appends [prefix/]rudder-logs/<source_id>/<YYYY-MM-DD>/<unix>.<source_id>.<batch_id>.json.gz,
 * date and unix time (UTC) of created_ms: what the batch is, so a retry
 * gets the same key. */
void objstore_format_key(Buf *out, const char *prefix, const char *source_id, int64_t created_ms,
                         const char *batch_id);

/* Appends the key of a raw archive object, RudderStack's jobs backup
 * layout: [prefix/]<source_id>/gw/<YYYY-MM-DD>/<hour>/<instance_id>/
 * <first unix>_<last unix>_<workspace_id>_<batch_id>.json.gz, date and
 * hour (UTC, hour not padded) of first_ms. Everything in it comes from the
 * journaled batch, so a retry gets the same key. */
void objstore_format_archive_key(Buf *out, const char *prefix, const char *source_id,
                                 int64_t first_ms, int64_t last_ms, const char *instance_id,
                                 const char *workspace_id, const char *batch_id);

/* Appends the gzip of data: the same bytes for the same data (mtime 0). */
void objstore_gzip(Buf *out, const void *data, size_t len);

/* Appends the URL of key in t (key segments percent-encoded). */
void objstore_format_url(Buf *out, const ObjTarget *t, const char *key);

/* Starts the signed PUT of body to key; done runs once on the loop. -1 if
 * it could not be started. */
int objstore_put(Httpc *h, const ObjTarget *t, const char *key, const void *body, size_t len,
                 long timeout_ms, HttpcDoneCb done, void *arg);

/* The S3 error code of an error response body (<Code>X</Code>) into out,
 * or "" when there is none. */
void objstore_error_code(const char *body, char *out, size_t size);

#endif
