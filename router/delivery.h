/* Turns a transformer delivery payload ({method, endpoint, headers, params,
 * body:{JSON|JSON_ARRAY|XML|FORM|GZIP}}) into an HTTP request, and
 * classifies the destination's answer. Pure: unit-tested. */
#ifndef ROUTER_DELIVERY_H
#define ROUTER_DELIVERY_H

#include <stddef.h>

#include "common/buf.h"
#include "common/err.h"

typedef struct Delivery {
    char method[8];
    Buf url;
    Buf body;
    char **headers; /* "Name: value", NULL-terminated */
    int nheaders;
    int has_body;
} Delivery;

/* Parses payload into d (caller runs delivery_deinit even on failure).
 * Fails on a payload without an endpoint or with an unknown method. */
MUST_CHECK int delivery_build(Delivery *d, const char *payload, Err *err);
void delivery_deinit(Delivery *d);

typedef enum DeliveryOutcome { DELIVERY_OK, DELIVERY_RETRY, DELIVERY_ABORT } DeliveryOutcome;

/* 2xx ok; 408, 429, 5xx, other non-4xx and status 0 (network error,
 * timeout) retry; other 4xx abort. */
DeliveryOutcome delivery_classify(long status);

#endif
