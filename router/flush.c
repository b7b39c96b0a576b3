/* Flush scheduling (see flush.h).
 *
 * Outcomes are written in batches: a flush begins at most every
 * router.flush_interval_ms while deliveries go on, so one transaction
 * (asynchronous commit) carries many outcomes; a load or due scan that
 * waits for pending writes, a partition being given back, and the stop
 * flush at once. A flush that fails takes nothing back: the engine drops
 * the state it covered (a fenced flush: the partitions it wrote to; any
 * other failure: everything), and what it held is claimed or loaded again
 * (at least once), here or by the partitions' next owner. */
#include "router/flush.h"

#include <stdlib.h>
#include <sys/time.h>

#include "common/xalloc.h"

struct Flusher {
    const RouterConfig *rc;
    Order *order;
    const Lease *lease;
    const Parts *parts;
    int64_t *epochs; /* of the flush's touched partitions */
    StoreFlush sf;
    OrderFlush fl;
    Buf fence;
    struct timeval began_at;
};

Flusher *flusher_create(const RouterConfig *rc, Order *o, const Lease *l, const Parts *ps)
{
    Flusher *f = xcalloc(1, sizeof(*f));
    f->rc = rc;
    f->order = o;
    f->lease = l;
    f->parts = ps;
    f->epochs = xmalloc(sizeof(int64_t) * (size_t)order_partitions(o));
    store_flush_init(&f->sf);
    buf_init(&f->fence);
    gettimeofday(&f->began_at, NULL);
    return f;
}

void flusher_destroy(Flusher *f)
{
    if (f == NULL)
        return;
    store_flush_deinit(&f->sf);
    buf_deinit(&f->fence);
    free(f->epochs);
    free(f);
}

static double since_ms(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return (double)(now.tv_sec - t->tv_sec) * 1000 + (double)(now.tv_usec - t->tv_usec) / 1000;
}

bool flusher_due(const Flusher *f, bool now)
{
    return order_flush_needed(f->order) &&
           (now || since_ms(&f->began_at) >= f->rc->flush_interval_ms);
}

void flusher_format(Flusher *f, StoreStmt *st)
{
    gettimeofday(&f->began_at, NULL);
    order_flush_begin(f->order, &f->fl);
    buf_reset(&f->fence);
    buf_puts(&f->fence, "");
    /* touched: ascending, open partitions only (dropped ones' writes are gone) */
    for (int i = 0; i < f->fl.ntouched; i++)
        f->epochs[i] = parts_epoch(f->parts, f->fl.touched[i]);
    lease_format_fence_epochs(f->lease, &f->fence, f->fl.touched, f->epochs, f->fl.ntouched);
    store_format_flush(&f->sf, &f->fl, f->fence.data);
    *st = (StoreStmt){.step = "flush",
                      .sql = f->sf.sql.data,
                      .nparams = -1,
                      .copies = f->sf.copies,
                      .ncopies = f->sf.ncopies};
}

int flusher_touched(const Flusher *f, const int **parts)
{
    *parts = f->fl.touched;
    return f->fl.ntouched;
}

void flusher_done(Flusher *f, int64_t now)
{
    order_flush_done(f->order, &f->fl, now);
}
