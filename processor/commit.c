/* The hand-off transaction (see commit.h).
 *
 * Order: outputs are written in gw job order, then destination order, then
 * the order of the transformer's answer (outputs_order), so each
 * (destination, user) keeps the order the gateway committed; rows of one
 * partition have increasing job ids, which a router's cursor relies on.
 *
 * Writers lock the partitions they append to (jobq_format_write: in
 * ascending order, so two writers never deadlock), the same locks gateways
 * take for gw. The cursor advance is compare-and-set (check_cursors): a
 * processor whose view of a cursor is stale cannot commit a duplicate
 * hand-off. The lease fence comes first (DESIGN §4): only the instance that
 * still holds every partition it advances, at the epoch it holds now, can
 * commit. */
#include "processor/commit.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hmap.h"
#include "common/jobq.h"
#include "common/xalloc.h"

void commit_init(Commit *c)
{
    memset(c, 0, sizeof *c);
    buf_init(&c->sql);
    buf_init(&c->rt_rows);
    buf_init(&c->brt_rows);
    buf_init(&c->dead_rows);
}

void commit_deinit(Commit *c)
{
    buf_deinit(&c->sql);
    buf_deinit(&c->rt_rows);
    buf_deinit(&c->brt_rows);
    buf_deinit(&c->dead_rows);
    free(c->rt_parts);
    free(c->brt_parts);
    memset(c, 0, sizeof *c);
}

void commit_format(Commit *c, Batch *b, const Lease *lease, const char *rt_table,
                   const char *brt_table, const CommitMoves *moves)
{
    const int *order = outputs_order(&b->outs, b->njobs);
    buf_reset(&c->rt_rows);
    buf_reset(&c->brt_rows);
    buf_reset(&c->dead_rows);
    if (c->parts_cap < b->outs.n + 1) {
        c->parts_cap = b->outs.n + 1;
        c->rt_parts = xrealloc(c->rt_parts, sizeof(int) * (size_t)c->parts_cap);
        c->brt_parts = xrealloc(c->brt_parts, sizeof(int) * (size_t)c->parts_cap);
    }
    int nrt = 0, nbrt = 0;
    for (int i = 0; i < b->outs.n; i++) {
        const Output *o = &b->outs.v[order[i]];
        const Job *j = &b->jobs[o->job];
        if (o->kind == OUTPUT_RT || o->kind == OUTPUT_BATCH_RT) {
            bool batch = o->kind == OUTPUT_BATCH_RT;
            JobRow r = {j->partition, j->workspace_id, j->source_id,
                        o->dest_id,   j->user_id,      outputs_payload(&b->outs, o),
                        o->len};
            jobq_copy_row(batch ? &c->brt_rows : &c->rt_rows, &r);
            if (batch)
                c->brt_parts[nbrt++] = j->partition;
            else
                c->rt_parts[nrt++] = j->partition;
        } else if (o->kind == OUTPUT_DEAD) {
            DeadLetter dl = {.queue = "gw",
                             .job_id = j->job_id,
                             .stage = o->reason == DEAD_USER_TRANSFORMATION
                                          ? "user_transformation"
                                          : "processor",
                             .partition = j->partition,
                             .workspace_id = j->workspace_id,
                             .source_id = j->source_id,
                             .destination_id = o->dest_id,
                             .user_id = j->user_id,
                             .status_code = o->status,
                             .reason = o->error,
                             .payload = o->dead_payload,
                             .attempts = 1};
            jobq_copy_dead_letter(&c->dead_rows, &dl);
        }
    }
    nrt = jobq_sort_partitions(c->rt_parts, nrt);
    nbrt = jobq_sort_partitions(c->brt_parts, nbrt);
    buf_reset(&c->sql);
    buf_puts(&c->sql, "BEGIN;");
    /* first: a commit after a takeover fails before writing anything, and
     * the lease rows stay locked until COMMIT, so no takeover can slip in */
    if (lease != NULL)
        lease_format_fence(lease, &c->sql, moves->parts, moves->n);
    int nc = 0;
    if (nrt > 0) {
        jobq_format_write(&c->sql, JOBQ_RT, rt_table, c->rt_parts, nrt, false, false);
        c->copies[nc++] = (DbCopy){c->rt_rows.data, c->rt_rows.len};
    }
    if (nbrt > 0) {
        jobq_format_write(&c->sql, JOBQ_BATCH_RT, brt_table, c->brt_parts, nbrt, false, false);
        c->copies[nc++] = (DbCopy){c->brt_rows.data, c->brt_rows.len};
    }
    if (c->dead_rows.len > 0) {
        buf_puts(&c->sql, JOBQ_SQL_COPY_DEAD_LETTERS);
        c->copies[nc++] = (DbCopy){c->dead_rows.data, c->dead_rows.len};
    }
    c->ncopies = nc;
    jobq_format_advance(&c->sql, "processor", moves->parts, moves->old_ids, moves->new_ids,
                        moves->n);
    buf_puts(&c->sql, ";COMMIT");
}

void commit_publish(const Batch *b, HintPub *rt_hints, HintPub *batch_hints, CommitTally *t)
{
    memset(t, 0, sizeof *t);
    HMap hinted;
    hmap_init(&hinted);
    for (int i = 0; i < b->outs.n; i++) {
        const Output *o = &b->outs.v[i];
        switch (o->kind) {
        case OUTPUT_RT:
        case OUTPUT_BATCH_RT: {
            bool batch = o->kind == OUTPUT_BATCH_RT;
            if (batch)
                t->batch_rt++;
            else
                t->rt++;
            char topic[256];
            snprintf(topic, sizeof topic, "%s:%s", batch ? "batch_rt" : "rt", o->dest_id);
            if (hmap_get(&hinted, topic) == NULL) {
                hmap_put(&hinted, topic, (void *)o);
                hint_pub_send(batch ? batch_hints : rt_hints, topic);
            }
            break;
        }
        case OUTPUT_FILTERED:
            t->filtered++;
            if (o->by_user)
                t->filtered_by_user++;
            break;
        case OUTPUT_DEAD:
            t->dead++;
            t->dead_by[o->reason]++;
            break;
        }
    }
    hmap_deinit(&hinted);
}
