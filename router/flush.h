/* Flush scheduling: when the outcomes, rt_retries rows, dead letters and
 * cursor moves the order state holds are written (one transaction, store.c),
 * and what becomes durable once it committed. Owns the flush buffers and
 * the flush in progress; borrows the order state. The engine sends what
 * flusher_format gives on its connection, one flush at a time. */
#ifndef ROUTER_FLUSH_H
#define ROUTER_FLUSH_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cfg.h"
#include "router/order.h"
#include "router/store.h"

typedef struct Flusher Flusher;

/* Never fails. */
Flusher *flusher_create(const RouterConfig *rc, Order *o);
void flusher_destroy(Flusher *f);
/* Something is to be written, and router.flush_interval_ms passed since
 * the last flush began (or now is true: stopping, or a load waits). */
bool flusher_due(const Flusher *f, bool now);
/* Begins a flush of everything pending; st is valid until it ended. */
void flusher_format(Flusher *f, StoreStmt *st);
/* The flush committed: what it wrote is durable. */
void flusher_done(Flusher *f, int64_t now_ms);

#endif
