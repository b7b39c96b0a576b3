/* The partitions the router works on: those it leases (common/lease.h).
 * Follows the lease's usable set and keeps, per partition, the epoch at
 * which its state in order.c was opened: a partition gained gets its
 * cursor loaded (checked against the lease row in the same query) and is
 * opened; one lost is dropped at once; one being given back is paused,
 * then spilled, flushed, dropped and handed back (lease_quiesced) once
 * idle; one whose renewal is late is paused until the lease is renewed or
 * lost, keeping its state (its flush is tried: the fence decides). Owns the
 * per-partition states and the cursor query's buffers; borrows the lease
 * and the order state. The engine sends what parts_format_load gives and
 * calls parts_follow whenever the lease may have changed. */
#ifndef ROUTER_PARTS_H
#define ROUTER_PARTS_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/err.h"
#include "common/lease.h"
#include "router/order.h"
#include "router/store.h"

typedef struct Parts Parts;

/* Never fails; no partition is open. */
Parts *parts_create(Lease *l, Order *o);
void parts_destroy(Parts *ps);

/* What changed in parts_follow or parts_push_load. */
typedef struct PartsChange {
    int dropped; /* lost: their state was dropped */
    int opened;  /* gained: opened with their cursor */
    int resumed; /* usable again after a late renewal */
} PartsChange;

/* Takes the lease's view: drops what was lost (a new epoch or none),
 * pauses what is given back or not usable, resumes what is usable again,
 * and asks for the cursors of what was gained (not while stopping, and not
 * while deliveries of it from before a drop are in flight: see
 * order_partition_orphans). */
PartsChange parts_follow(Parts *ps, bool stopping, int64_t now_ms);
/* Cheap test, for every pump: false when the lease's clock ran out since
 * the last parts_follow, or partitions paused because it had are usable
 * again (renewal is per instance, so one partition tells each), or an
 * orphaned delivery returned while a partition waited for its orphans. */
bool parts_fresh(const Parts *ps);

/* Partitions gained wait for their cursors. */
bool parts_load_wanted(const Parts *ps);
/* Formats the cursor query for them (st valid until the result is pushed). */
void parts_format_load(Parts *ps, StoreStmt *st);
/* Its result: each partition still leased at the epoch asked for is
 * opened; the others are left alone until the lease shows a new epoch. */
PartsChange parts_push_load(Parts *ps, const PGresult *res, int64_t now_ms);

/* Partitions given back: spills those with no delivery in flight (so their
 * cursors pass everything claimed), drops and hands back those that are
 * idle. Returns how many were handed back. */
int parts_hand_back(Parts *ps, int64_t now_ms);
/* A partition given back waits for a flush. */
bool parts_flush_wanted(const Parts *ps);

/* A flush that wrote to these partitions was refused by the fence: they
 * are dropped; those the database still shows as ours are opened again at
 * a parts_follow once their orphaned deliveries returned (the cursor query
 * checks), the others once the lease shows them again at a new epoch. */
void parts_fenced(Parts *ps, const int *parts, int n);
/* The order state was reset (database error): every partition is closed;
 * the usable ones get their cursors again at the next parts_follow. */
void parts_reset(Parts *ps);

/* The epoch partition p's state was opened under (the fence of a flush
 * that writes to it checks that one, not the lease's epoch now); 0 when
 * it is not open. */
int64_t parts_epoch(const Parts *ps, int p);
/* Partitions open (working or paused). */
int parts_open(const Parts *ps);
/* Appends the partitions in parts (ascending) as "1,2,5" to out. */
void parts_format_list(char *out, size_t size, const int *parts, int n);

#endif
