/* What the processor reads next: for each of the P partitions, whether its
 * gw cursor is loaded (and under which lease epoch), the committed cursor,
 * the cursor the batch in progress advances it to, and the row limit of the
 * next claim; and the partitions claimed from (the active set).
 * Owns those arrays (sized P at init, no allocation afterwards). Used by
 * the pipeline, which loads cursors from the database, formats claims and
 * commits; pure, so it is unit-tested. */
#ifndef PROCESSOR_CLAIM_H
#define PROCESSOR_CLAIM_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct ClaimPlan {
    int nparts;      /* P */
    int claim_batch; /* processor.claim_batch: rows of one claim, roughly */
    int64_t *cursor; /* [P] last job id committed; valid when epoch[p] != 0 */
    int64_t *next;   /* [P] last job id of the batch in progress */
    int64_t *epoch;  /* [P] lease epoch the cursor was loaded under; 0: not loaded */
    int *limit;      /* [P] rows of the next claim */
    int *got;        /* [P] rows of the batch in progress */
    int *active;     /* partitions claimed from, ascending */
    int nactive;
    int64_t *scratch_cursor; /* [P] claim formatting */
    int *scratch_limit;      /* [P] */
} ClaimPlan;

void claim_plan_init(ClaimPlan *c, int nparts, int claim_batch);
void claim_plan_deinit(ClaimPlan *c);

/* The cursor of partition part, read from the database while holding it
 * at lease epoch epoch (> 0). Ignored for a partition outside 0..P-1. */
void claim_plan_set_cursor(ClaimPlan *c, int part, int64_t cursor, int64_t epoch);
/* Whether part's cursor was loaded under epoch. */
bool claim_plan_is_loaded(const ClaimPlan *c, int part, int64_t epoch);
/* Forgets every loaded cursor (they are read again before the next claim)
 * and empties the active set. */
void claim_plan_forget(ClaimPlan *c);

/* Sets the partitions to claim from (ascending, each loaded). A partition
 * that joins the set starts at the base row limit. */
void claim_plan_set_active(ClaimPlan *c, const int *parts, int n);
bool claim_plan_has(const ClaimPlan *c, int part);

/* Appends the claim statement over the active set (jobq_format_claim
 * columns). Only when nactive > 0. */
void claim_plan_format(const ClaimPlan *c, Buf *sql);

/* A batch: begin, one row() per claimed row (its partition and job id, in
 * job id order within each partition), end with the number of rows. end
 * adapts the limits: a partition that filled its limit gets a bigger share
 * next time (doubling), but the whole claim stays near claim_batch rows,
 * so memory is bounded by it; the others go back to the base limit. */
void claim_plan_begin(ClaimPlan *c);
static inline void claim_plan_row(ClaimPlan *c, int part, int64_t job_id)
{
    if (part >= 0 && part < c->nparts) {
        c->next[part] = job_id;
        c->got[part]++;
    }
}
void claim_plan_end(ClaimPlan *c);

/* The cursors the batch moves: writes parts[i], old_ids[i], new_ids[i]
 * (room for P each) in ascending partition order; returns how many. */
int claim_plan_moves(const ClaimPlan *c, int *parts, int64_t *old_ids, int64_t *new_ids);
/* The batch committed: its cursors are the committed ones. */
void claim_plan_committed(ClaimPlan *c);

#endif
