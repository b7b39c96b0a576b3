/* The hand-off transaction of one batch (DESIGN §3, invariant 2): in one
 * transaction, the batch's rt and batch_rt jobs (COPY, after the partition
 * locks of jobq_format_write), its dead letters (COPY) and the
 * compare-and-set advance of the gw cursors it read; and, once that
 * committed, the hints to the consumers and the batch's counts.
 * Owns the statement text and the COPY buffers, kept between batches so a
 * commit allocates nothing once they have grown. Borrows the batch (its
 * jobs, outputs and snapshot) while the statement is in flight. */
#ifndef PROCESSOR_COMMIT_H
#define PROCESSOR_COMMIT_H

#include <stdint.h>

#include "common/buf.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/lease.h"
#include "processor/outputs.h"
#include "processor/route.h"

typedef struct Commit {
    Buf sql, rt_rows, brt_rows, dead_rows;
    DbCopy copies[3]; /* what the COPY statements of sql read, in order */
    int ncopies;
    int *rt_parts, *brt_parts;
    int parts_cap;
} Commit;

/* The gw cursors a batch advances: parts[i] from old_ids[i] to new_ids[i]. */
typedef struct CommitMoves {
    const int *parts;
    const int64_t *old_ids, *new_ids;
    int n;
} CommitMoves;

void commit_init(Commit *c);
void commit_deinit(Commit *c);

/* Formats the transaction of batch b into c->sql and c->copies (valid until
 * the next commit_format): BEGIN; the lease fence of the partitions whose
 * cursors moves advances (at the epochs lease holds now; no fence when
 * lease is NULL); the rt jobs into rt_table, the batch_rt jobs into
 * brt_table, in outputs_order; the dead letters; the cursor advance of
 * moves (raises, rolling everything back, if another consumer moved one
 * first); COMMIT. */
void commit_format(Commit *c, Batch *b, const Lease *lease, const char *rt_table,
                   const char *brt_table, const CommitMoves *moves);

typedef struct CommitTally {
    int rt, batch_rt, dead, filtered;
    int filtered_by_user; /* of filtered: dropped by a user transformation */
    int dead_by[DEAD_NREASONS];
} CommitTally;

/* After COMMIT: one hint per queue and destination that got jobs (either
 * publisher may be NULL), and the counts of b's outputs into t. */
void commit_publish(const Batch *b, HintPub *rt_hints, HintPub *batch_hints, CommitTally *t);

#endif
