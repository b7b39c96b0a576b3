/* Claims of rt jobs (see claim.h).
 *
 * One claim reads up to claim_batch / P + 8 jobs beyond each partition's
 * read cursor (store.c's claim: one index range per partition, in job
 * order), so a partition far behind never crowds out the others within a
 * claim, and a partition that filled its page is claimed again at once. */
#include "router/claim.h"

#include <stdlib.h>

#include "common/buf.h"
#include "common/xalloc.h"

struct Claim {
    const RouterConfig *rc;
    Order *order;
    bool want;
    Buf sql;
    int64_t *cursors;
    int *got;
    int cap;
};

Claim *claim_create(const RouterConfig *rc, Order *o)
{
    Claim *c = xcalloc(1, sizeof(*c));
    c->rc = rc;
    c->order = o;
    c->want = true;
    buf_init(&c->sql);
    return c;
}

void claim_destroy(Claim *c)
{
    if (c == NULL)
        return;
    buf_deinit(&c->sql);
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

static int per_partition(const Claim *c, int nparts)
{
    return c->rc->claim_batch / nparts + 8;
}

/* Room for one value per partition in the scratch arrays. */
static void reserve(Claim *c, int nparts)
{
    if (c->cap >= nparts)
        return;
    c->cap = nparts;
    c->cursors = xrealloc(c->cursors, sizeof(*c->cursors) * (size_t)nparts);
    c->got = xrealloc(c->got, sizeof(*c->got) * (size_t)nparts);
}

void claim_format(Claim *c, StoreStmt *st)
{
    int n = order_partitions(c->order);
    reserve(c, n);
    order_read_cursors(c->order, c->cursors);
    buf_reset(&c->sql);
    store_format_claim(&c->sql, c->cursors, n, per_partition(c, n));
    c->want = false;
    *st = (StoreStmt){.step = "claim", .sql = c->sql.data, .nparams = -1};
}

void claim_push(Claim *c, const PGresult *res, int64_t now)
{
    int nparts = order_partitions(c->order);
    reserve(c, nparts);
    int per = per_partition(c, nparts);
    for (int p = 0; p < nparts; p++)
        c->got[p] = 0;
    int n = res ? PQntuples(res) : 0;
    bool full = false;
    for (int i = 0; i < n; i++) {
        OrderRows rows;
        OrderJob *j = store_claimed_job(res, i, &rows);
        if (j->partition < 0 || j->partition >= nparts) {
            order_job_free(j);
            continue;
        }
        if (++c->got[j->partition] >= per)
            full = true;
        order_push_claimed(c->order, j, rows, now);
    }
    c->want = full;
}
