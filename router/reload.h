/* Rows coming back from rt_retries into memory, two ways: the due scan
 * (heads whose retry time came, of users not in memory), paged by
 * (next_retry_at, job_id), and pages of the parked rows of users whose
 * rows in memory are all delivered (order_take_loads). Owns the scan
 * position, the parameter buffers and the users of the load in flight;
 * borrows the order state. The engine sends what reload_format gives, with
 * nothing left to flush (so what it reads is complete), and hands the
 * result back with reload_push. */
#ifndef ROUTER_RELOAD_H
#define ROUTER_RELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/cfg.h"
#include "router/order.h"
#include "router/store.h"

typedef struct Reload Reload;

/* Never fails. */
Reload *reload_create(const RouterConfig *rc, Order *o);
void reload_destroy(Reload *r);
/* A new term: the due scan starts from the beginning, at once. */
void reload_rewind(Reload *r);
/* Memory has room, and users wait for their next rows or a due scan is
 * due (poll interval, or the last page was full). */
bool reload_wanted(const Reload *r, int64_t now_ms);
/* Formats a page load when users wait for one (within their destination's
 * budget), else the due scan; false when neither can run now. st is valid
 * until the result was pushed. */
bool reload_format(Reload *r, int64_t now_ms, StoreStmt *st);
/* The result of the statement reload_format gave. */
void reload_push(Reload *r, const PGresult *res, int64_t now_ms);

#endif
