/* Claims of rt jobs (see claim.h).
 *
 * One claim reads up to claim_batch / P + 8 jobs beyond the read cursor of
 * each partition the order state has open and not paused (store.c's claim:
 * one index range per partition, in job order), so a partition far behind
 * never crowds out the others within a claim, and a partition that filled
 * its page is claimed again at once. The page size does not depend on how
 * many partitions this instance leases, so a claim costs the same per
 * partition whatever the number of routers. */
#include "router/claim.h"

#include <stdlib.h>

#include "common/buf.h"
#include "common/xalloc.h"

struct Claim {
    const RouterConfig *rc;
    Order *order;
    bool want;
    Buf sql;
    int *parts;
    int64_t *cursors;
    int *got;
    int nparts;
};

Claim *claim_create(const RouterConfig *rc, Order *o)
{
    Claim *c = xcalloc(1, sizeof(*c));
    c->rc = rc;
    c->order = o;
    c->want = true;
    buf_init(&c->sql);
    c->nparts = order_partitions(o);
    c->parts = xmalloc(sizeof(*c->parts) * (size_t)c->nparts);
    c->cursors = xmalloc(sizeof(*c->cursors) * (size_t)c->nparts);
    c->got = xmalloc(sizeof(*c->got) * (size_t)c->nparts);
    return c;
}

void claim_destroy(Claim *c)
{
    if (c == NULL)
        return;
    buf_deinit(&c->sql);
    free(c->parts);
    free(c->cursors);
    free(c->got);
    free(c);
}

void claim_want(Claim *c)
{
    c->want = true;
}

bool claim_wanted(const Claim *c)
{
    return c->want && order_jobs(c->order) < c->rc->max_pending_jobs;
}

static int per_partition(const Claim *c)
{
    return c->rc->claim_batch / c->nparts + 8;
}

bool claim_format(Claim *c, StoreStmt *st)
{
    c->want = false;
    int n = order_claim_cursors(c->order, c->parts, c->cursors);
    if (n == 0)
        return false; /* no partition to claim from */
    buf_reset(&c->sql);
    store_format_claim(&c->sql, c->parts, c->cursors, n, per_partition(c));
    *st = (StoreStmt){.step = "claim", .sql = c->sql.data, .nparams = -1};
    return true;
}

void claim_push(Claim *c, const PGresult *res, int64_t now)
{
    int per = per_partition(c);
    for (int p = 0; p < c->nparts; p++)
        c->got[p] = 0;
    int n = res ? PQntuples(res) : 0;
    bool full = false;
    for (int i = 0; i < n; i++) {
        OrderRows rows;
        OrderJob *j = store_claimed_job(res, i, &rows);
        int p = j->partition;
        /* rows of a partition paused or dropped meanwhile are left for
         * later or for its next owner (its cursor does not move) */
        if (!order_push_claimed(c->order, j, rows, now))
            continue;
        if (++c->got[p] >= per)
            full = true;
    }
    c->want = c->want || full;
}
