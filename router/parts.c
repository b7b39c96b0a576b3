/* The partitions the router works on (see parts.h).
 *
 * Safety rests on the fence, not on this file: every flush starts with
 * lease_fence for the partitions it writes to, so a router that lost a
 * lease without knowing it (paused, partitioned) cannot commit. What this
 * file adds is promptness and no wasted work: state of a partition lost is
 * dropped as soon as the lease says so (and its deliveries in flight are
 * orphaned, order.c), nothing new starts on a partition whose renewal is
 * late (lease_usable follows the local clock), and a partition gained is
 * opened only after the cursor query has seen the lease row at the epoch
 * the lease reported, in the database itself: a cursor read then includes
 * every flush of the previous owner (its fence holds the lease row until it
 * commits, and lease_tick cannot take the row meanwhile).
 *
 * Giving back (another instance joined): paused at once; when none of its
 * deliveries is in flight, every job claimed and not durable is written to
 * rt_retries (spilled), so the flush moves its cursor past everything
 * claimed and the next owner does not deliver again what was delivered
 * here; once that flush committed (idle) it is dropped and handed back.
 *
 * A partition dropped while deliveries of it were in flight (lost, or in a
 * fenced flush) is not opened again before they all returned: opened from
 * its cursor, it would deliver those jobs again while the first attempts
 * may still land, twice at once, and a slow first attempt of a user's job
 * could land after its later job was delivered again (out of order). Each
 * return of an orphan makes parts_fresh false, so the engine follows again. */
#include "router/parts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/xalloc.h"

typedef enum PState {
    P_CLOSED, /* no state here */
    P_WANTED, /* usable: its cursor is to be loaded */
    P_SENT,   /* the cursor query is in flight */
    P_OPEN    /* open in order.c at epoch */
} PState;

typedef struct PartState {
    PState st;
    int64_t epoch;   /* P_OPEN: opened at; P_WANTED, P_SENT: asked for */
    int64_t blocked; /* refused at this epoch: not opened again before another */
    bool giving;     /* being given back: paused */
    bool stale;      /* renewal late: paused */
    bool spilled;    /* giving, and its claimed jobs were written */
} PartState;

struct Parts {
    Lease *lease;
    Order *order;
    int nparts;
    PartState *s;
    int probe;   /* an open, working partition, for parts_fresh; -1: none */
    int stale;   /* an open partition paused for a late renewal; -1: none */
    int ngiving; /* open and being given back */
    int orphans; /* order_orphans when a partition last waited for its orphans; -1: none waits */
    Buf params;
    int *load_parts;
    int64_t *load_epochs;
    int nload;
};

Parts *parts_create(Lease *l, Order *o)
{
    Parts *ps = xcalloc(1, sizeof(*ps));
    ps->lease = l;
    ps->order = o;
    ps->nparts = order_partitions(o);
    ps->s = xcalloc((size_t)ps->nparts, sizeof(*ps->s));
    ps->load_parts = xmalloc(sizeof(int) * (size_t)ps->nparts);
    ps->load_epochs = xmalloc(sizeof(int64_t) * (size_t)ps->nparts);
    ps->probe = ps->stale = ps->orphans = -1;
    buf_init(&ps->params);
    return ps;
}

void parts_destroy(Parts *ps)
{
    if (ps == NULL)
        return;
    buf_deinit(&ps->params);
    free(ps->load_parts);
    free(ps->load_epochs);
    free(ps->s);
    free(ps);
}

static void close_part(Parts *ps, int p)
{
    PartState *s = &ps->s[p];
    if (s->st == P_OPEN)
        order_drop_partition(ps->order, p);
    if (s->st == P_OPEN && s->giving)
        ps->ngiving--;
    s->st = P_CLOSED;
    s->giving = s->stale = s->spilled = false;
}

PartsChange parts_follow(Parts *ps, bool stopping, int64_t now)
{
    PartsChange ch = {0, 0, 0};
    ps->probe = ps->stale = ps->orphans = -1;
    for (int p = 0; p < ps->nparts; p++) {
        PartState *s = &ps->s[p];
        int64_t epoch = lease_epoch(ps->lease, p);
        bool usable = lease_usable(ps->lease, p);
        if (s->blocked != 0 && s->blocked != epoch)
            s->blocked = 0;
        switch (s->st) {
        case P_OPEN:
            if (epoch != s->epoch) {
                close_part(ps, p); /* lost, or lost and taken again: start over */
                ch.dropped++;
                break;
            }
            if (lease_giving(ps->lease, p)) {
                if (!s->giving) {
                    order_pause_partition(ps->order, p, true, now);
                    ps->ngiving++;
                }
                s->giving = true;
            } else if (!usable) {
                if (!s->stale)
                    order_pause_partition(ps->order, p, true, now);
                s->stale = true;
            } else if (s->stale) {
                s->stale = false;
                order_pause_partition(ps->order, p, false, now);
                ch.resumed++;
            }
            if (!s->giving && !s->stale)
                ps->probe = p;
            if (!s->giving && s->stale)
                ps->stale = p;
            break;
        case P_WANTED:
        case P_SENT:
            if (!usable || epoch != s->epoch || stopping)
                s->st = P_CLOSED; /* a result in flight for it is ignored */
            break;
        case P_CLOSED:
            if (usable && !stopping && epoch != s->blocked &&
                order_partition_orphans(ps->order, p) > 0) {
                ps->orphans = order_orphans(ps->order); /* not before they returned */
            } else if (usable && !stopping && epoch != s->blocked) {
                s->st = P_WANTED;
                s->epoch = epoch;
            }
            break;
        }
    }
    return ch;
}

bool parts_fresh(const Parts *ps)
{
    /* the lease's clock ran out for the working ones, or a renewal made the
     * paused ones usable again (a renewal that ends a lapse the expiry
     * timer had not seen yet may not call changed()) */
    return (ps->probe < 0 || lease_usable(ps->lease, ps->probe)) &&
           (ps->stale < 0 || !lease_usable(ps->lease, ps->stale)) &&
           (ps->orphans < 0 || order_orphans(ps->order) == ps->orphans);
}

bool parts_load_wanted(const Parts *ps)
{
    for (int p = 0; p < ps->nparts; p++)
        if (ps->s[p].st == P_WANTED)
            return true;
    return false;
}

void parts_format_load(Parts *ps, StoreStmt *st)
{
    ps->nload = 0;
    for (int p = 0; p < ps->nparts; p++)
        if (ps->s[p].st == P_WANTED) {
            ps->s[p].st = P_SENT;
            ps->load_parts[ps->nload] = p;
            ps->load_epochs[ps->nload] = ps->s[p].epoch;
            ps->nload++;
        }
    Buf *b = &ps->params;
    buf_reset(b);
    store_put_int_array(b, ps->load_parts, ps->nload);
    size_t off = b->len + 1;
    buf_putc(b, '\0');
    store_put_int64_array(b, ps->load_epochs, ps->nload);
    *st = (StoreStmt){.step = "load_cursors",
                      .sql = STORE_SQL_CURSORS,
                      .nparams = 3,
                      .params = {lease_owner(ps->lease), b->data, b->data + off}};
}

PartsChange parts_push_load(Parts *ps, const PGresult *res, int64_t now)
{
    PartsChange ch = {0, 0, 0};
    for (int i = 0; i < PQntuples(res); i++) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p < 0 || p >= ps->nparts || ps->s[p].st != P_SENT)
            continue; /* no longer usable since the query was sent */
        order_add_partition(ps->order, p, strtoll(PQgetvalue(res, i, 1), NULL, 10));
        ps->s[p].st = P_OPEN;
        ps->s[p].giving = ps->s[p].stale = ps->s[p].spilled = false;
        ch.opened++;
    }
    /* the database does not show the lease at that epoch (any more): wait
     * for the lease to show what became of it */
    for (int i = 0; i < ps->nload; i++) {
        PartState *s = &ps->s[ps->load_parts[i]];
        if (s->st == P_SENT) {
            s->st = P_CLOSED;
            s->blocked = s->epoch;
        }
    }
    ps->nload = 0;
    (void)now;
    return ch;
}

int parts_hand_back(Parts *ps, int64_t now)
{
    int n = 0;
    for (int p = 0; p < ps->nparts && ps->ngiving > 0; p++) {
        PartState *s = &ps->s[p];
        if (s->st != P_OPEN || !s->giving)
            continue;
        if (!s->spilled && order_partition_inflight(ps->order, p) == 0) {
            order_spill_partition(ps->order, p, now);
            s->spilled = true;
        }
        if (s->spilled && order_partition_idle(ps->order, p)) {
            close_part(ps, p);
            lease_quiesced(ps->lease, p);
            n++;
        }
    }
    return n;
}

bool parts_flush_wanted(const Parts *ps)
{
    for (int p = 0; p < ps->nparts && ps->ngiving > 0; p++) {
        const PartState *s = &ps->s[p];
        if (s->st == P_OPEN && s->spilled && !order_partition_idle(ps->order, p))
            return true;
    }
    return false;
}

void parts_fenced(Parts *ps, const int *parts, int n)
{
    for (int i = 0; i < n; i++) {
        int p = parts[i];
        /* not blocked: the fence refuses the whole flush when any of its
         * partitions was lost, so some may still be ours; the cursor query
         * that opens them again tells which */
        if (p >= 0 && p < ps->nparts && ps->s[p].st == P_OPEN)
            close_part(ps, p);
    }
}

void parts_reset(Parts *ps)
{
    for (int p = 0; p < ps->nparts; p++) {
        PartState *s = &ps->s[p];
        s->st = P_CLOSED;
        s->giving = s->stale = s->spilled = false;
    }
    ps->nload = 0;
    ps->probe = ps->stale = ps->orphans = -1;
    ps->ngiving = 0;
}

int64_t parts_epoch(const Parts *ps, int p)
{
    return p >= 0 && p < ps->nparts && ps->s[p].st == P_OPEN ? ps->s[p].epoch : 0;
}

int parts_open(const Parts *ps)
{
    int n = 0;
    for (int p = 0; p < ps->nparts; p++)
        n += ps->s[p].st == P_OPEN;
    return n;
}

void parts_format_list(char *out, size_t size, const int *parts, int n)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < n && len + 12 < size; i++)
        len += (size_t)snprintf(out + len, size - len, i ? ",%d" : "%d", parts[i]);
}
