/* Flush scheduling: when the outcomes, rt_retries rows, dead letters and
 * cursor moves the order state holds are written (one transaction, store.c,
 * fenced by the leases of the partitions it writes to), and what becomes
 * durable once it committed. Owns the flush buffers and the flush in
 * progress; borrows the order state, the lease and the partitions. The engine sends what
 * flusher_format gives on its connection, one flush at a time. */
#ifndef ROUTER_FLUSH_H
#define ROUTER_FLUSH_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cfg.h"
#include "common/lease.h"
#include "router/order.h"
#include "router/parts.h"
#include "router/store.h"

typedef struct Flusher Flusher;

/* Never fails. ps: the epochs the fences check. */
Flusher *flusher_create(const RouterConfig *rc, Order *o, const Lease *l, const Parts *ps);
void flusher_destroy(Flusher *f);
/* Something is to be written, and router.flush_interval_ms passed since
 * the last flush began (or now is true: stopping, or a load waits). */
bool flusher_due(const Flusher *f, bool now);
/* Begins a flush of everything pending; st is valid until it ended. Its
 * first statement is the fence of every partition it writes to, at the
 * epochs their state was opened under (parts_epoch): a flush of state
 * opened in an earlier term of a partition is refused even if the lease
 * holds it again now. */
void flusher_format(Flusher *f, StoreStmt *st);
/* The partitions the flush in progress writes to (borrowed, ascending). */
int flusher_touched(const Flusher *f, const int **parts);
/* The flush committed: what it wrote is durable. */
void flusher_done(Flusher *f, int64_t now_ms);

#endif
