/* Flush scheduling (see flush.h).
 *
 * Outcomes are written in batches: a flush begins at most every
 * router.flush_interval_ms while deliveries go on, so one transaction
 * (asynchronous commit) carries many outcomes; a load or due scan that
 * waits for pending writes, and the stop, flush at once. A flush that
 * fails takes nothing back: the engine drops the state it covered, and
 * what it held is claimed or loaded again (at least once). */
#include "router/flush.h"

#include <stdlib.h>
#include <sys/time.h>

#include "common/xalloc.h"

struct Flusher {
    const RouterConfig *rc;
    Order *order;
    StoreFlush sf;
    OrderFlush fl;
    struct timeval began_at;
};

Flusher *flusher_create(const RouterConfig *rc, Order *o)
{
    Flusher *f = xcalloc(1, sizeof(*f));
    f->rc = rc;
    f->order = o;
    store_flush_init(&f->sf);
    return f;
}

void flusher_destroy(Flusher *f)
{
    if (f == NULL)
        return;
    store_flush_deinit(&f->sf);
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
    store_format_flush(&f->sf, &f->fl);
    *st = (StoreStmt){.step = "flush",
                      .sql = f->sf.sql.data,
                      .nparams = -1,
                      .copies = f->sf.copies,
                      .ncopies = f->sf.ncopies};
}

void flusher_done(Flusher *f, int64_t now)
{
    order_flush_done(f->order, &f->fl, now);
}
