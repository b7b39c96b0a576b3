/* Partition leases of a consuming stage (DESIGN §4, sql/007_leases.sql).
 * Owns its own database connection (so a renewal never waits behind the
 * stage's work), its tick timer and the table of partitions it holds.
 *
 * Every lease.renew_interval_ms the instance heartbeats and renews what it
 * holds in one call of lease_tick(); the database answers which partitions
 * it owns, with their epochs (fencing tokens), and which of them it should
 * give back because another instance joined. The caller:
 *  - works only on partitions for which lease_usable() is true (held, not
 *    being given back, and renewed less than lease.ttl_ms ago by this
 *    process' clock: a renewal that cannot reach the database makes every
 *    partition unusable before any other instance may take it);
 *  - puts lease_format_fence() first in every transaction that consumes
 *    work, for the partitions the transaction touches; a commit after a
 *    takeover fails with lease_is_fenced(err) true, and the caller drops
 *    what it held in memory for those partitions;
 *  - calls lease_quiesced(p) once a partition being given back has no work
 *    in progress; it is freed at once (an early tick);
 *  - is told by changed() whenever the usable set may have changed.
 * Graceful stop: lease_leave() frees every lease and removes the instance,
 * so the others take over at their next tick, not after expiry. */
#ifndef COMMON_LEASE_H
#define COMMON_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/cfg.h"
#include "common/err.h"

struct event_base;
typedef struct Metrics Metrics;
typedef struct Lease Lease;

/* What the instance row shows (pintlectl status, hint discovery). */
typedef struct LeaseInfo {
    const char *admin_address; /* "host:port" of /health and /metrics */
    const char *hint_endpoint; /* nanomsg endpoint it receives hints on, or "" */
} LeaseInfo;

/* stage: "processor", "router" or "batchrouter". changed(arg) runs on the
 * loop after a tick that changed the usable set (also when partitions
 * become unusable because renewals failed). The first tick runs at once. */
Lease *lease_create(struct event_base *base, const Config *cfg, const char *stage,
                    const LeaseInfo *info, Metrics *metrics, void (*changed)(void *arg), void *arg);
void lease_destroy(Lease *l);

/* This instance's id (host:pid:random), the owner column of its leases. */
const char *lease_owner(const Lease *l);
const char *lease_stage(const Lease *l);
int lease_partitions(const Lease *l); /* P */

bool lease_usable(const Lease *l, int partition);
/* Epoch of a held partition (usable or being given back), else 0. */
int64_t lease_epoch(const Lease *l, int partition);
/* Held and asked to be given back: start no new work on it. */
bool lease_giving(const Lease *l, int partition);
/* Usable partitions in ascending order into parts (room for P); returns n. */
int lease_usable_list(const Lease *l, int *parts);

/* The caller has nothing in progress on partition (being given back): free it now. */
void lease_quiesced(Lease *l, int partition);

/* Appends "SELECT lease_fence(...);" for the given partitions (sorted or
 * not, duplicates allowed) at the epochs held now. Nothing for n == 0. */
void lease_format_fence(const Lease *l, Buf *sql, const int *parts, int n);
/* The same at the caller's epochs (those its state of each partition was
 * opened under; epochs[i] for parts[i]); parts ascending without
 * duplicates. Nothing for n == 0. */
void lease_format_fence_epochs(const Lease *l, Buf *sql, const int *parts, const int64_t *epochs,
                               int n);
/* The error of a transaction refused by the fence (SQLSTATE PL409). */
bool lease_is_fenced(const Err *err);

/* The instance is draining (graceful stop): from the next tick on it takes
 * no partition and no longer counts in the others' fair share, so they take
 * at once whatever it gives back (lease_giving, lease_quiesced). */
void lease_drain(Lease *l);

/* Stops ticking, frees every lease and removes the instance row; done(arg)
 * runs on the loop when that finished or failed (logged), at most after
 * lease.ttl_ms. Nothing is usable afterwards. */
void lease_leave(Lease *l, void (*done)(void *arg), void *arg);

#endif
