/* Metrics shared by the worker processes of one gateway (gateway.workers >
 * 1), so that one scrape of the port, whichever worker answers it, shows
 * every worker (each series labelled worker="i") and rate() stays right.
 * Owns one anonymous shared mapping made by the supervisor before it
 * forks: a slot per worker holding that worker's latest metrics_snapshot.
 * Workers publish into their own slot (gateway/main.c, every
 * ops.metrics_publish_ms) and read the others' when they answer /metrics.
 * No locks: a slot is a seqlock, so a worker killed while writing leaves
 * its slot unreadable until its successor publishes, never a torn read. */
#ifndef GATEWAY_MSHARE_H
#define GATEWAY_MSHARE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

typedef struct MetricsShare MetricsShare;

/* Before fork. NULL when the mapping fails (the caller logs: each worker
 * then shows only its own metrics). Caller frees with mshare_destroy. */
MetricsShare *mshare_create(int workers);
void mshare_destroy(MetricsShare *sh);
int mshare_workers(const MetricsShare *sh);
/* Stores data[0..len) as worker's snapshot; false when it does not fit. */
bool mshare_publish(MetricsShare *sh, int worker, const char *data, size_t len);
/* Appends worker's last snapshot to out; false when it has none yet, or it
 * is being written (retried a few times first). */
bool mshare_read(const MetricsShare *sh, int worker, Buf *out);

#endif
