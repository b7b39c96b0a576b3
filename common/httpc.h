/* Async HTTP client: libcurl's multi interface driven by the libevent loop.
 * Owns the curl multi handle, one easy handle per request in flight, and
 * the socket/timer events curl asks for. Does not own request data beyond
 * the call (it copies URL, headers and body). Used by the processor (to
 * call the transformer) and the router (to deliver). Connections are kept
 * alive and reused across requests to the same host. */
#ifndef COMMON_HTTPC_H
#define COMMON_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/err.h"

struct event_base;

typedef struct Httpc Httpc;

typedef struct HttpcResponse {
    long status;         /* HTTP status, 0 when no response */
    int curl_code;       /* CURLE_OK or the transport error */
    const char *error;   /* transport error text, or NULL */
    const char *body;    /* response body (NUL-terminated), borrowed until the callback returns */
    size_t body_len;
    bool truncated;      /* the body went past the request's max_response_bytes */
    double seconds;      /* total time */
} HttpcResponse;

typedef void (*HttpcDoneCb)(void *arg, const HttpcResponse *res);

typedef struct HttpcRequest {
    const char *method;  /* GET, POST, PUT, PATCH, DELETE */
    const char *url;
    const char *const *headers; /* "Name: value" strings, NULL-terminated; may be NULL */
    const char *body;
    size_t body_len;
    long timeout_ms;
    /* Bytes of the response body kept (0: 1 MiB). Beyond it the response
     * is truncated: with keep_prefix the transfer goes on and the first
     * max_response_bytes are reported (bodies kept only as context); else
     * the transfer is aborted at once (a caller that needs the whole
     * answer), reported with the server's status and the prefix read.
     * Either way truncated is set. */
    size_t max_response_bytes;
    bool keep_prefix;
    /* AWS Signature V4 (object storage): libcurl signs the request with
     * this CURLOPT_AWS_SIGV4 provider string ("aws:amz:<region>:s3") and
     * the credentials "<access key id>:<secret>" in userpwd. libcurl does
     * not send x-amz-content-sha256: the caller puts it in headers, and it
     * is signed with them. NULL: no signing. */
    const char *aws_sigv4;
    const char *userpwd;
} HttpcRequest;

Httpc *httpc_create(struct event_base *base, long max_host_connections);
void httpc_destroy(Httpc *h);
/* Redirects connections for every later request: list is comma-separated
 * libcurl CURLOPT_CONNECT_TO entries "HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT"
 * (e.g. "api2.amplitude.com:443:127.0.0.1:9443"): the URL, the Host header
 * and the TLS server name stay the production ones, only the TCP connection
 * goes elsewhere. NULL or "" clears it. Fails, changing nothing, on an entry
 * that is not of that shape. */
MUST_CHECK int httpc_set_connect_to(Httpc *h, const char *list, Err *err);
/* The CA bundle (PEM file) servers are verified with (CURLOPT_CAINFO), for
 * every later request; NULL or "": libcurl's default (the system's). Fails
 * when the file cannot be read. */
MUST_CHECK int httpc_set_ca_file(Httpc *h, const char *path, Err *err);
/* Starts a request; done runs exactly once, later, on the loop (never
 * synchronously). Returns 0, or -1 if the request could not be started. */
int httpc_start(Httpc *h, const HttpcRequest *req, HttpcDoneCb done, void *arg);
int httpc_inflight(const Httpc *h);
/* Ends every transfer in flight now (shutdown deadline): each callback runs
 * once, from the loop shortly after this returns (never inside it), with
 * status 0 and error "cancelled". Requests started afterwards run normally. */
void httpc_cancel_all(Httpc *h);

/* Appends the lower-case hex SHA-256 of data (65 bytes with the NUL). */
void httpc_sha256_hex(const void *data, size_t len, char out[65]);

/* Appends s percent-encoded for a URL query component. */
void httpc_url_encode(Buf *out, const char *s, size_t n);

#endif
