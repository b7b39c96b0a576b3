/* The /health and /metrics endpoints of a worker process (processor,
 * router). Owns its evhttp instance and listening socket; reads the
 * Metrics registry and asks the caller for readiness. */
#ifndef COMMON_ADMIN_H
#define COMMON_ADMIN_H

#include <stdbool.h>

#include "common/err.h"
#include "common/metrics.h"

struct event_base;

typedef struct Admin Admin;

/* ready(arg, detail, size) fills a short JSON object body and returns
 * whether the process is ready (200) or not (503). port 0 disables. */
Admin *admin_open(struct event_base *base, const char *address, int port, Metrics *m,
                  bool (*ready)(void *arg, char *detail, size_t size), void *arg, Err *err);
void admin_close(Admin *a);

#endif
