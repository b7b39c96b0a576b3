/* Claims of rt jobs beyond the partition cursors: whether a claim is
 * wanted (a hint, the poll interval, a full page last time), how many jobs
 * per partition, and handing the claimed jobs to the ordering state
 * machine. Owns its SQL buffer; borrows the order state. The engine sends
 * the statement claim_format gives on its connection and hands the result
 * back with claim_push. */
#ifndef ROUTER_CLAIM_H
#define ROUTER_CLAIM_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/cfg.h"
#include "router/order.h"
#include "router/store.h"

typedef struct Claim Claim;

/* Never fails; a claim is wanted at first. */
Claim *claim_create(const RouterConfig *rc, Order *o);
void claim_destroy(Claim *c);
/* New jobs may be waiting (a hint, the poll interval, a new term). */
void claim_want(Claim *c);
/* A claim is wanted and memory has room for more jobs. */
bool claim_wanted(const Claim *c);
/* Formats the claim over the read cursors of the partitions open and not
 * paused into st (valid until the next claim_format); false when there is
 * none. The claim is no longer wanted until claim_want or a full page in
 * claim_push. */
bool claim_format(Claim *c, StoreStmt *st);
/* The rows of the claim: every job goes to the order state in job order
 * (except those of partitions no longer open, or paused). A partition that
 * filled its page wants another claim at once, and so does a claim_want
 * that came while this one ran. */
void claim_push(Claim *c, const PGresult *res, int64_t now_ms);

#endif
