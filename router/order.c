/* Per-user ordering and parking (see order.h).
 *
 * Every (destination, user) with jobs in memory has a window: its jobs in
 * job order, of which only the head is ever delivered. A window holds rows
 * first (jobs that have a row in rt_retries: loaded from it, or written to
 * it), then memory-only jobs (claimed from rt_jobs, nowhere else: not
 * durable, so their partition's cursor stops at the first of them). A
 * delivered memory-only job is durable at once: successes leave no row.
 * The one rule that keeps order across crashes: a row is never written for
 * a job later than a memory-only job of the same user. So rt_retries holds
 * a prefix of each user's pending jobs, and memory-only jobs, claimed again
 * after a crash, land behind it.
 *
 * Jobs go to rt_retries (and leave memory once written):
 *  - when a head fails: its row records attempts and retry time; the
 *    memory-only jobs behind it are parked (parked = true), loaded rows
 *    behind it are dropped; later jobs of the user are parked while it
 *    waits, and the user leaves memory once its rows are written;
 *  - when a user is spilled: one of its jobs kept a partition cursor waiting
 *    spill_after_ms (a destination that never answers, or is far behind),
 *    or its destination holds more than max_held_per_dest undelivered jobs
 *    while memory runs short and another destination is active. Its
 *    memory-only jobs are written: the first as the head, due at once, when
 *    no row precedes it (it stays in memory, maybe in flight), the others
 *    parked.
 * Jobs claimed while a user catches up on its rows are not written: they
 * wait in memory behind the rows, and once those are delivered the user is
 * memory-only again.
 *
 * In rt_retries, each user with rows has exactly one row with parked =
 * false: its smallest job id, the head, due at next_retry_at. Every flush
 * keeps that true: heads are written unparked, later jobs parked, and when
 * heads are deleted (done or dead) the user's smallest remaining row is
 * promoted (store.c). So the table alone says what to do after a crash or a
 * fail-over, and rows come back into memory two ways: due heads of users
 * not in memory, from a paged scan by next_retry_at (order_push_due); and,
 * when no row of a user is left in memory but rt_retries may hold more
 * (before its memory-only jobs), its next page in job order
 * (order_take_loads, order_push_loaded).
 *
 * Durability (DESIGN §3): a partition cursor passes a job only when its fate
 * is durable: delivered without a row, or its row or dead letter committed,
 * or written by the flush that moves the cursor. Memory is authoritative for
 * the users it holds; for others the claim says whether rt_retries holds
 * rows of the user, and then the job is parked behind them.
 *
 * Partitions (leases, DESIGN §4): every job, user and cursor belongs to one
 * partition (users are keyed by partition too), so a partition's state can
 * be dropped on its own when its lease is lost: what was not flushed is
 * claimed or loaded again by the next owner (at least once), and the rule
 * above still holds for what was. Deliveries in flight of a dropped
 * partition become orphans: they keep their destination's in-flight slot
 * until they return, and their outcome is thrown away. A paused partition
 * (being given back) starts nothing new; once idle (nothing in flight,
 * written or uncovered by its cursor) the engine drops it. */
#include "router/order.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/hmap.h"
#include "common/utf8.h"
#include "common/xalloc.h"

/* Stored error texts and responses are cut to this many bytes. */
#define ORDER_TEXT_MAX 4096

typedef enum LoadState { LOAD_NONE, LOAD_WANTED, LOAD_SENT } LoadState;

typedef struct OrderDest {
    char *id;
    int inflight;
    int held;        /* undelivered jobs in memory (windows and unwritten parks) */
    int loading;     /* users waiting for their next rows to be loaded */
    int loads_sent;  /* of those, loads sent */
    int64_t seen_ms; /* a job of it last came into memory */
    OrderUser *ready_head, *ready_tail;
} OrderDest;

struct OrderUser {
    char *key; /* partition \x1f destination \x1f user */
    const char *user_id;
    int partition;
    OrderDest *dest;
    OrderJob *head, *tail; /* the window: rows, then memory-only jobs */
    int64_t load_after;    /* rows with job_id > load_after are not in memory */
    bool more;             /* rt_retries may hold rows of the user not in the window */
    bool parked_in_load;   /* jobs were parked while a load was in flight */
    LoadState load;
    bool ready;    /* in the destination's ready list */
    bool detached; /* released while in the ready list or loading (partition
                    * dropped): freed when popped and its load returned */
    bool deferred; /* released while a due scan was in flight: kept until it ends */
    OrderUser *next_ready;
    OrderUser *next_load;
    OrderUser *next_deferred;
};

typedef struct OrderPart {
    OrderJob *head, *tail; /* claimed jobs the cursor has not passed, in job order */
    int64_t read_cursor;   /* last job id claimed */
    int64_t durable_cursor;
    bool open;    /* its state is held here (order_add_partition) */
    bool paused;  /* no new work */
    int inflight; /* deliveries in flight of its jobs (orphans not counted) */
    int writing;  /* its jobs with a write pending or in the flush in progress */
    int orphans;  /* deliveries in flight since it was last dropped (kept across the drop) */
} OrderPart;

struct Order {
    OrderLimits lim;
    int nparts;
    OrderPart *parts;
    HMap dests;
    OrderDest **dest_list;
    int ndests, capdests, rr;
    HMap users;
    int nusers;
    OrderUser *loads_head, *loads_tail; /* LOAD_WANTED, in order */
    bool due_open;                      /* a due scan is in flight */
    OrderUser *deferred;                /* users released meanwhile */
    OrderUser *zombies;                 /* dropped while their load is in flight */
    OrderJob *all;
    int njobs, inflight;
    int orphans; /* every partition's */
    OrderJob **dirty;
    int ndirty, capdirty;
    int gen;
    OrderJob **fl_jobs; /* the flush in progress: NULL where a job was dropped */
    int capfl, fl_njobs;
    int *fl_parts; /* its cursor moves: -1 where a partition was dropped */
    int64_t *fl_old, *fl_new;
    int fl_nmoves;
    int *fl_touched;
    char *fl_mark;
    Buf key;
    OrderStats stats;
};

static void settle(Order *o, OrderUser *u, int64_t now);

/* ---- jobs ---- */

OrderJob *order_job_create(int64_t job_id, int partition, const char *workspace_id,
                           const char *source_id, const char *dest_id, const char *user_id,
                           const char *payload, size_t payload_len)
{
    size_t lw = strlen(workspace_id) + 1, ls = strlen(source_id) + 1, ld = strlen(dest_id) + 1,
           lu = strlen(user_id) + 1;
    OrderJob *j = xmalloc(sizeof(*j) + lw + ls + ld + lu + payload_len + 1);
    memset(j, 0, sizeof(*j));
    char *p = (char *)(j + 1);
    j->workspace_id = memcpy(p, workspace_id, lw);
    j->source_id = memcpy(p += lw, source_id, ls);
    j->dest_id = memcpy(p += ls, dest_id, ld);
    j->user_id = memcpy(p += ld, user_id, lu);
    p += lu;
    memcpy(p, payload, payload_len);
    p[payload_len] = '\0';
    j->payload = p;
    j->job_id = job_id;
    j->partition = partition;
    return j;
}

void order_job_free(OrderJob *j)
{
    if (j == NULL)
        return;
    free(j->last_error);
    free(j->response);
    free(j);
}

/* A job counts against its destination's budget while it waits to be
 * delivered in a window, or to be written as a parked row. */
static void update_held(OrderJob *j)
{
    bool h = j->in_win || (j->fate == ORDER_PENDING && (j->dirty || j->flush_gen != 0));
    if (h != j->held) {
        j->dest->held += h ? 1 : -1;
        j->held = h;
    }
}

/* A partition is idle only with none of its jobs waiting to be written or
 * in the flush in progress. */
static void update_writing(Order *o, OrderJob *j)
{
    bool w = j->dirty || j->flush_gen != 0;
    if (w != j->writing) {
        o->parts[j->partition].writing += w ? 1 : -1;
        j->writing = w;
    }
}

static void all_add(Order *o, OrderJob *j)
{
    j->prev_all = NULL;
    j->next_all = o->all;
    if (o->all)
        o->all->prev_all = j;
    o->all = j;
    o->njobs++;
}

/* A job leaves memory once nothing refers to it: no window, no partition
 * list, no pending write, no flush in progress, no delivery in flight. */
static void maybe_free(Order *o, OrderJob *j)
{
    if (j->in_win || j->in_part || j->dirty || j->flush_gen != 0 || j->inflight)
        return;
    update_held(j);
    ASSERT(!j->held);
    if (j->prev_all)
        j->prev_all->next_all = j->next_all;
    else
        o->all = j->next_all;
    if (j->next_all)
        j->next_all->prev_all = j->prev_all;
    o->njobs--;
    order_job_free(j);
}

static void mark_dirty(Order *o, OrderJob *j)
{
    if (!j->dirty) {
        if (o->ndirty == o->capdirty) {
            o->capdirty = o->capdirty ? o->capdirty * 2 : 256;
            o->dirty = xrealloc(o->dirty, sizeof(*o->dirty) * (size_t)o->capdirty);
        }
        o->dirty[o->ndirty++] = j;
        j->dirty = true;
    }
    update_held(j);
    update_writing(o, j);
}

/* j (not in a window) becomes a row written at the next flush. */
static void park(Order *o, OrderJob *j)
{
    o->stats.parked++;
    j->row = true;
    j->parked = true;
    mark_dirty(o, j);
}

/* A row with no failed attempt is due at once; a failed head waits for its
 * retry time (compared with our clock only for rows we failed ourselves). */
static bool is_waiting(const OrderJob *j, int64_t now)
{
    return j->row && j->attempts > 0 && j->next_retry_ms > now;
}

/* ---- destinations and users ---- */

static OrderDest *dest_get(Order *o, const char *id)
{
    OrderDest *d = hmap_get(&o->dests, id);
    if (d != NULL)
        return d;
    d = xcalloc(1, sizeof(*d));
    d->id = xstrdup(id);
    hmap_put(&o->dests, id, d);
    if (o->ndests == o->capdests) {
        o->capdests = o->capdests ? o->capdests * 2 : 8;
        o->dest_list = xrealloc(o->dest_list, sizeof(*o->dest_list) * (size_t)o->capdests);
    }
    o->dest_list[o->ndests++] = d;
    return d;
}

static bool dest_full(const Order *o, const OrderDest *d)
{
    return d->held + d->loading >= o->lim.max_held_per_dest;
}

/* A destination over its budget gives back what it holds beyond it when
 * memory runs short and another destination is active, so the claim keeps
 * flowing for that one. Alone, it keeps its jobs: spilling would only move
 * its backlog from rt_jobs to rt_retries. */
static bool over_budget(const Order *o, const OrderDest *d, int64_t now)
{
    if (d->held <= o->lim.max_held_per_dest || (int64_t)o->njobs * 4 < (int64_t)o->lim.max_jobs * 3)
        return false;
    for (int i = 0; i < o->ndests; i++) {
        const OrderDest *x = o->dest_list[i];
        if (x != d && (x->held > 0 || now - x->seen_ms < 1000))
            return true;
    }
    return false;
}

/* The user id is last, so it can be read from the key. */
static const char *user_key(Order *o, int partition, const char *dest, const char *user,
                            size_t *user_off)
{
    /* the partition in decimal, without printf (once per job coming in) */
    char num[16];
    int i = (int)sizeof num;
    unsigned v = (unsigned)partition;
    do
        num[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    buf_reset(&o->key);
    buf_append(&o->key, num + i, sizeof num - (size_t)i);
    buf_putc(&o->key, '\x1f');
    buf_puts(&o->key, dest);
    buf_putc(&o->key, '\x1f');
    if (user_off)
        *user_off = o->key.len;
    buf_puts(&o->key, user);
    return o->key.data;
}

static OrderUser *user_find(Order *o, const OrderJob *j)
{
    return hmap_get(&o->users, user_key(o, j->partition, j->dest_id, j->user_id, NULL));
}

static OrderUser *user_add(Order *o, OrderDest *d, const OrderJob *j)
{
    OrderUser *u = xcalloc(1, sizeof(*u));
    size_t off;
    u->key = xstrdup(user_key(o, j->partition, d->id, j->user_id, &off));
    u->user_id = u->key + off;
    u->partition = j->partition;
    u->dest = d;
    hmap_put(&o->users, u->key, u);
    o->nusers++;
    return u;
}

/* The user leaves memory (its window is empty, no load is in progress).
 * While a due scan is in flight the user stays known: the scan read the
 * table before this user's last rows were delivered (their deletes are not
 * written yet), and must not bring them back. */
static void user_release(Order *o, OrderUser *u)
{
    ASSERT(u->head == NULL && u->load == LOAD_NONE);
    if (o->due_open) {
        if (!u->deferred) {
            u->deferred = true;
            u->next_deferred = o->deferred;
            o->deferred = u;
        }
        return;
    }
    hmap_del(&o->users, u->key);
    o->nusers--;
    if (u->ready) {
        u->detached = true; /* order_take_ready frees it */
        return;
    }
    free(u->key);
    free(u);
}

static void win_append(OrderUser *u, OrderJob *j)
{
    j->user = u;
    j->in_win = true;
    j->next_win = NULL;
    if (u->tail)
        u->tail->next_win = j;
    else
        u->head = j;
    u->tail = j;
    update_held(j);
}

static void win_unlink_head(OrderUser *u)
{
    OrderJob *j = u->head;
    u->head = j->next_win;
    if (u->head == NULL)
        u->tail = NULL;
    j->next_win = NULL;
    j->in_win = false;
    j->user = NULL;
    update_held(j);
}

/* The head may be delivered: not in flight, not waiting for a retry time,
 * and, when it is memory-only, no row of the user waits before it. */
static bool head_ready(const OrderUser *u, int64_t now)
{
    const OrderJob *j = u->head;
    return j != NULL && !j->inflight && !is_waiting(j, now) && (j->row || !u->more);
}

static void make_ready(OrderUser *u, int64_t now)
{
    if (u->ready || !head_ready(u, now))
        return;
    OrderDest *d = u->dest;
    u->ready = true;
    u->next_ready = NULL;
    if (d->ready_tail)
        d->ready_tail->next_ready = u;
    else
        d->ready_head = u;
    d->ready_tail = u;
}

static void want_load(Order *o, OrderUser *u)
{
    u->load = LOAD_WANTED;
    u->dest->loading++;
    u->next_load = NULL;
    if (o->loads_tail)
        o->loads_tail->next_load = u;
    else
        o->loads_head = u;
    o->loads_tail = u;
}

/* Removes the whole window; everything in it is in rt_retries. */
static void evict(Order *o, OrderUser *u)
{
    u->more = true; /* while it stays known (user_release), its rows are there */
    while (u->head) {
        OrderJob *j = u->head;
        win_unlink_head(u);
        if (!j->row || j->dirty)
            park(o, j); /* a memory-only follower: written behind the rows */
        maybe_free(o, j);
    }
    user_release(o, u);
}

/* Takes the user to its next state after any change: ready to deliver,
 * waiting (evicted once written), loading its next rows, or gone. */
static void settle(Order *o, OrderUser *u, int64_t now)
{
    OrderJob *h = u->head;
    if (u->deferred && h == NULL && u->load == LOAD_NONE)
        return; /* released: known only until the due scan ends */
    if (h == NULL || !h->row) {
        if (u->more) {
            if (u->load == LOAD_NONE)
                want_load(o, u); /* its next rows come before anything in memory */
            return;
        }
        if (h == NULL) {
            if (u->load == LOAD_NONE)
                user_release(o, u); /* no rows left: memory-only again */
            return;
        }
        make_ready(u, now);
        return;
    }
    /* A head row that waits for its retry time, or whose destination is
     * over its budget, leaves memory once written: rt_retries has it all
     * and the due scan brings it back. */
    if (!h->inflight && (is_waiting(h, now) || over_budget(o, u->dest, now))) {
        if (h->durable && !h->dirty && h->flush_gen == 0 && !u->ready)
            evict(o, u);
        return;
    }
    make_ready(u, now);
}

/* Parks every job of the chain f (memory-only jobs cut from a window). */
static void park_chain(Order *o, OrderUser *u, OrderJob *f)
{
    if (f == NULL)
        return;
    u->more = true;
    if (u->load == LOAD_SENT)
        u->parked_in_load = true; /* the page in flight cannot contain them */
    while (f != NULL) {
        OrderJob *n = f->next_win;
        f->next_win = NULL;
        f->in_win = false;
        f->user = NULL;
        park(o, f);
        f = n;
    }
}

/* The user's memory-only jobs go to rt_retries, so its partitions' cursors
 * can pass them. A window is rows, then memory-only jobs; with no row in
 * memory or in rt_retries before it, the first memory-only job becomes the
 * head row, due at once (it stays in memory, maybe in flight); the others
 * are parked behind the rows and leave the window. */
static void spill_user(Order *o, OrderUser *u, int64_t now)
{
    OrderJob *h = u->head;
    if (h == NULL)
        return;
    if (!h->row && !u->more) {
        h->row = true;
        h->parked = false;
        h->next_retry_ms = now;
        mark_dirty(o, h);
    }
    OrderJob *last = NULL;
    for (OrderJob *j = h; j && j->row; j = j->next_win)
        last = j;
    OrderJob *f = last ? last->next_win : h;
    if (last) {
        last->next_win = NULL;
        u->tail = last;
        u->load_after = last->job_id;
    } else {
        u->head = u->tail = NULL;
    }
    park_chain(o, u, f);
}

/* ---- lifecycle ---- */

Order *order_create(const OrderLimits *lim, int nparts)
{
    ASSERT(nparts > 0);
    Order *o = xcalloc(1, sizeof(*o));
    o->lim = *lim;
    if (o->lim.max_inflight_per_dest < 1)
        o->lim.max_inflight_per_dest = 1;
    if (o->lim.max_held_per_dest < 1)
        o->lim.max_held_per_dest = 1;
    hmap_init(&o->dests);
    hmap_init(&o->users);
    buf_init(&o->key);
    o->nparts = nparts;
    o->parts = xcalloc((size_t)nparts, sizeof(*o->parts));
    o->fl_parts = xmalloc(sizeof(int) * (size_t)nparts);
    o->fl_old = xmalloc(sizeof(int64_t) * (size_t)nparts);
    o->fl_new = xmalloc(sizeof(int64_t) * (size_t)nparts);
    o->fl_touched = xmalloc(sizeof(int) * (size_t)nparts);
    o->fl_mark = xcalloc((size_t)nparts, 1);
    return o;
}

static void user_free(OrderUser *u)
{
    free(u->key);
    free(u);
}

void order_reset(Order *o)
{
    ASSERT(o->inflight == 0);
    while (o->all) {
        OrderJob *j = o->all;
        o->all = j->next_all;
        order_job_free(j);
    }
    o->njobs = 0;
    for (int i = 0; i < o->ndests; i++) {
        OrderDest *d = o->dest_list[i];
        /* users detached while ready are only in these lists (or also in
         * the zombie list, which frees them below) */
        for (OrderUser *u = d->ready_head, *n; u; u = n) {
            n = u->next_ready;
            if (u->detached && u->load != LOAD_SENT)
                user_free(u);
        }
        d->ready_head = d->ready_tail = NULL;
        d->held = d->loading = d->loads_sent = d->inflight = 0;
    }
    while (o->zombies) {
        OrderUser *u = o->zombies;
        o->zombies = u->next_load;
        user_free(u);
    }
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&o->users, &it, &e))
        user_free(e->value);
    hmap_deinit(&o->users);
    hmap_init(&o->users);
    o->nusers = 0;
    o->loads_head = o->loads_tail = NULL;
    o->due_open = false;
    o->deferred = NULL;
    o->ndirty = 0;
    o->fl_njobs = o->fl_nmoves = 0;
    for (int p = 0; p < o->nparts; p++)
        memset(&o->parts[p], 0, sizeof(o->parts[p]));
}

void order_destroy(Order *o)
{
    if (o == NULL)
        return;
    order_reset(o);
    for (int i = 0; i < o->ndests; i++) {
        free(o->dest_list[i]->id);
        free(o->dest_list[i]);
    }
    free(o->dest_list);
    hmap_deinit(&o->dests);
    hmap_deinit(&o->users);
    free(o->parts);
    free(o->dirty);
    free(o->fl_jobs);
    free(o->fl_parts);
    free(o->fl_old);
    free(o->fl_new);
    free(o->fl_touched);
    free(o->fl_mark);
    buf_deinit(&o->key);
    free(o);
}

/* ---- partitions ---- */

void order_add_partition(Order *o, int p, int64_t cursor)
{
    /* an orphan of its last term could still land after the same job
     * delivered again, or at the same time (parts.c waits for them) */
    ASSERT(p >= 0 && p < o->nparts && !o->parts[p].open && o->parts[p].orphans == 0);
    OrderPart *pt = &o->parts[p];
    memset(pt, 0, sizeof(*pt));
    pt->open = true;
    pt->read_cursor = pt->durable_cursor = cursor;
}

bool order_partition_open(const Order *o, int p)
{
    return p >= 0 && p < o->nparts && o->parts[p].open;
}

/* Open and not paused: it takes new work. */
static bool part_live(const Order *o, int p)
{
    return p >= 0 && p < o->nparts && o->parts[p].open && !o->parts[p].paused;
}

int order_partition_inflight(const Order *o, int p)
{
    return o->parts[p].inflight;
}

bool order_partition_idle(const Order *o, int p)
{
    const OrderPart *pt = &o->parts[p];
    return pt->inflight == 0 && pt->writing == 0 && pt->head == NULL &&
           pt->read_cursor == pt->durable_cursor;
}

/* The users of partition p (caller frees the array): collected, because
 * the map cannot change while it is walked. */
static OrderUser **part_users(Order *o, int p, int *n)
{
    int cap = 0;
    OrderUser **users = NULL;
    *n = 0;
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&o->users, &it, &e)) {
        OrderUser *u = e->value;
        if (u->partition != p)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            users = xrealloc(users, sizeof(*users) * (size_t)cap);
        }
        users[(*n)++] = u;
    }
    return users;
}

void order_pause_partition(Order *o, int p, bool paused, int64_t now)
{
    OrderPart *pt = &o->parts[p];
    if (!pt->open || pt->paused == paused)
        return;
    pt->paused = paused;
    if (paused)
        return; /* its users leave the ready lists as order_take_ready meets them */
    /* work goes on: its users are taken to their next state again */
    int n;
    OrderUser **users = part_users(o, p, &n);
    for (int i = 0; i < n; i++)
        settle(o, users[i], now);
    free(users);
}

int order_claim_cursors(const Order *o, int *parts, int64_t *cursors)
{
    int n = 0;
    for (int p = 0; p < o->nparts; p++)
        if (part_live(o, p)) {
            parts[n] = p;
            cursors[n] = o->parts[p].read_cursor;
            n++;
        }
    return n;
}

/* Users of partition p leave the load list and the deferred list (one
 * pass over each). */
static void unlink_part_users(Order *o, int p)
{
    OrderUser **x = &o->loads_head;
    o->loads_tail = NULL;
    while (*x) {
        OrderUser *u = *x;
        if (u->partition == p) {
            *x = u->next_load;
            u->next_load = NULL;
            u->load = LOAD_NONE;
            u->dest->loading--;
        } else {
            o->loads_tail = u;
            x = &u->next_load;
        }
    }
    for (x = &o->deferred; *x;) {
        OrderUser *u = *x;
        if (u->partition == p) {
            *x = u->next_deferred;
            u->next_deferred = NULL;
            u->deferred = false;
        } else {
            x = &u->next_deferred;
        }
    }
}

/* The user leaves with its partition: it is no longer known; it is freed
 * now unless a ready list or the load in flight still refers to it. */
static void user_drop(Order *o, OrderUser *u)
{
    OrderDest *d = u->dest;
    hmap_del(&o->users, u->key);
    o->nusers--;
    u->head = u->tail = NULL;
    ASSERT(u->load != LOAD_WANTED && !u->deferred); /* unlink_part_users ran */
    if (u->load == LOAD_SENT) {
        d->loading--;
        d->loads_sent--;
        u->next_load = o->zombies; /* order_push_loaded frees it */
        o->zombies = u;
    }
    if (u->ready || u->load == LOAD_SENT)
        u->detached = true;
    else
        user_free(u);
}

void order_drop_partition(Order *o, int p)
{
    ASSERT(p >= 0 && p < o->nparts);
    OrderPart *pt = &o->parts[p];
    if (!pt->open)
        return;
    unlink_part_users(o, p);
    int n;
    OrderUser **users = part_users(o, p, &n);
    for (int i = 0; i < n; i++)
        user_drop(o, users[i]);
    free(users);
    /* no write and no part of the flush in progress refers to its jobs */
    int k = 0;
    for (int i = 0; i < o->ndirty; i++)
        if (o->dirty[i]->partition != p)
            o->dirty[k++] = o->dirty[i];
    o->ndirty = k;
    for (int i = 0; i < o->fl_njobs; i++)
        if (o->fl_jobs[i] && o->fl_jobs[i]->partition == p)
            o->fl_jobs[i] = NULL;
    for (int i = 0; i < o->fl_nmoves; i++)
        if (o->fl_parts[i] == p)
            o->fl_parts[i] = -1;
    /* then its jobs: freed, or orphans while in flight */
    for (OrderJob *j = o->all, *next; j; j = next) {
        next = j->next_all;
        if (j->partition != p)
            continue;
        if (j->prev_all)
            j->prev_all->next_all = j->next_all;
        else
            o->all = j->next_all;
        if (j->next_all)
            j->next_all->prev_all = j->prev_all;
        o->njobs--;
        if (j->held)
            j->dest->held--;
        if (j->inflight) {
            j->orphan = true;
            pt->orphans++;
            o->orphans++;
            j->in_win = j->in_part = j->dirty = j->held = j->writing = false;
            j->flush_gen = 0;
            j->user = NULL;
            j->next_win = j->next_part = j->prev_all = j->next_all = NULL;
            continue;
        }
        order_job_free(j);
    }
    int orphans = pt->orphans;
    memset(pt, 0, sizeof(*pt));
    pt->orphans = orphans;
}

int order_partition_orphans(const Order *o, int p)
{
    return p >= 0 && p < o->nparts ? o->parts[p].orphans : 0;
}

int order_orphans(const Order *o)
{
    return o->orphans;
}

bool order_job_dropped(const OrderJob *j)
{
    return j->orphan;
}

/* ---- jobs coming in ---- */

bool order_push_claimed(Order *o, OrderJob *j, OrderRows rows, int64_t now)
{
    if (!part_live(o, j->partition)) {
        order_job_free(j);
        return false;
    }
    OrderPart *p = &o->parts[j->partition];
    p->read_cursor = j->job_id;
    j->in_part = true;
    j->next_part = NULL;
    if (p->tail)
        p->tail->next_part = j;
    else
        p->head = j;
    p->tail = j;
    j->claimed_ms = now;
    j->dest = dest_get(o, j->dest_id);
    j->dest->seen_ms = now;
    all_add(o, j);
    if (rows == ORDER_ROWS_OWN) {
        j->durable = true; /* the cursor may pass it; the row is loaded like any other */
        return true;
    }
    OrderUser *u = user_find(o, j);
    if ((u == NULL && rows == ORDER_ROWS_USER) ||
        (u != NULL && u->deferred && u->head == NULL && u->load == LOAD_NONE && u->more)) {
        park(o, j); /* behind rows that only rt_retries holds (the user was evicted) */
        return true;
    }
    if (u == NULL) {
        u = user_add(o, j->dest, j);
    } else if (u->head && is_waiting(u->head, now)) {
        park(o, j); /* behind a failed head: it leaves memory */
        u->more = true;
        return true;
    }
    /* Otherwise the job waits in memory behind the user's rows, loaded or
     * not: a user that is catching up gets back to memory-only as soon as
     * its rows are delivered, and its new jobs are never written. */
    win_append(u, j);
    if (over_budget(o, j->dest, now)) {
        spill_user(o, u, now);
        o->stats.spilled_budget++;
    }
    settle(o, u, now);
    return true;
}

bool order_push_due(Order *o, OrderJob *j, int64_t now)
{
    if (!part_live(o, j->partition)) {
        order_job_free(j);
        return false;
    }
    OrderDest *d = dest_get(o, j->dest_id);
    d->seen_ms = now;
    if (user_find(o, j) != NULL || dest_full(o, d)) {
        order_job_free(j);
        return false;
    }
    j->dest = d;
    j->row = true;
    j->parked = false;
    j->durable = true;
    if (j->next_retry_ms > now)
        j->next_retry_ms = now; /* due by the database's clock */
    all_add(o, j);
    OrderUser *u = user_add(o, d, j);
    win_append(u, j);
    u->load_after = j->job_id;
    u->more = true; /* its parked rows, if any, follow */
    settle(o, u, now);
    return true;
}

void order_due_begin(Order *o)
{
    o->due_open = true;
}

void order_due_end(Order *o, int64_t now)
{
    (void)now;
    o->due_open = false;
    while (o->deferred) {
        OrderUser *u = o->deferred;
        o->deferred = u->next_deferred;
        u->next_deferred = NULL;
        u->deferred = false;
        /* Released users leave now. One that took new jobs meanwhile (a
         * memory-only user again) is live and was settled then; one that
         * was evicted never is: its head waits in rt_retries, and a load
         * from load_after would pass it. */
        if (u->head == NULL && u->load == LOAD_NONE)
            user_release(o, u);
    }
}

int order_take_loads(Order *o, OrderUser **users, int64_t *after, int max, int page)
{
    int n = 0;
    OrderUser *prev = NULL;
    for (OrderUser *u = o->loads_head, *next; u && n < max; u = next) {
        next = u->next_load;
        OrderDest *d = u->dest;
        /* within the budget; beyond it too when the destination has
         * nothing else to deliver (all it holds may be jobs waiting for
         * rows to be loaded before them), one load at a time */
        bool stuck = d->loads_sent == 0 && d->inflight == 0 && d->ready_head == NULL;
        if (o->parts[u->partition].paused ||
            (!stuck && d->held + d->loads_sent * page >= o->lim.max_held_per_dest)) {
            prev = u;
            continue;
        }
        if (prev)
            prev->next_load = next;
        else
            o->loads_head = next;
        if (o->loads_tail == u)
            o->loads_tail = prev;
        u->next_load = NULL;
        u->load = LOAD_SENT;
        d->loads_sent++;
        users[n] = u;
        after[n] = u->load_after;
        n++;
    }
    return n;
}

bool order_loads_wanted(const Order *o)
{
    return o->loads_head != NULL;
}

const char *order_user_dest(const OrderUser *u)
{
    return u->dest->id;
}

const char *order_user_id(const OrderUser *u)
{
    return u->user_id;
}

int order_user_partition(const OrderUser *u)
{
    return u->partition;
}

void order_push_loaded(Order *o, OrderUser *u, OrderJob **jobs, int n, bool full, int64_t now)
{
    ASSERT(u->load == LOAD_SENT);
    if (u->detached) {
        /* its partition was dropped while the page was read */
        for (int i = 0; i < n; i++)
            order_job_free(jobs[i]);
        for (OrderUser **x = &o->zombies; *x; x = &(*x)->next_load)
            if (*x == u) {
                *x = u->next_load;
                break;
            }
        u->next_load = NULL;
        u->load = LOAD_NONE;
        if (!u->ready)
            user_free(u);
        return;
    }
    ASSERT(u->head == NULL || !u->head->row);
    OrderDest *d = u->dest;
    u->load = LOAD_NONE;
    d->loading--;
    d->loads_sent--;
    d->seen_ms = now;
    /* the rows go before the memory-only jobs of the window (all later) */
    OrderJob *rest = u->head, *first = NULL, *last = NULL;
    int64_t limit = rest ? rest->job_id : INT64_MAX;
    for (int i = 0; i < n; i++) {
        OrderJob *j = jobs[i];
        /* rt_retries holds a prefix of the user's pending jobs: its rows
         * come before every memory-only job (store.c's claim) */
        ASSERT(j->job_id > u->load_after && j->job_id < limit && strcmp(j->dest_id, d->id) == 0);
        j->dest = d;
        j->row = true;
        j->parked = true;
        j->durable = true;
        j->user = u;
        j->in_win = true;
        all_add(o, j);
        update_held(j);
        if (last)
            last->next_win = j;
        else
            first = j;
        last = j;
        u->load_after = j->job_id;
    }
    if (first) {
        last->next_win = rest;
        u->head = first;
        if (rest == NULL)
            u->tail = last;
        first->parked = false; /* promoted when its predecessor was deleted */
    }
    u->more = full || u->parked_in_load;
    u->parked_in_load = false;
    settle(o, u, now);
}

/* ---- deliveries ---- */

OrderJob *order_take_ready(Order *o, int64_t now)
{
    for (int k = 0; k < o->ndests; k++) {
        int i = (o->rr + k) % o->ndests;
        OrderDest *d = o->dest_list[i];
        while (d->inflight < o->lim.max_inflight_per_dest && d->ready_head) {
            OrderUser *u = d->ready_head;
            d->ready_head = u->next_ready;
            if (d->ready_head == NULL)
                d->ready_tail = NULL;
            u->next_ready = NULL;
            u->ready = false;
            if (u->detached) {
                if (u->load != LOAD_SENT)
                    user_free(u);
                continue;
            }
            if (o->parts[u->partition].paused)
                continue; /* settled again when it goes on */
            if (!head_ready(u, now)) {
                settle(o, u, now);
                continue;
            }
            OrderJob *j = u->head;
            j->inflight = true;
            d->inflight++;
            o->inflight++;
            o->parts[u->partition].inflight++;
            o->rr = (i + 1) % o->ndests;
            return j;
        }
    }
    return NULL;
}

static void end_inflight(Order *o, OrderJob *j)
{
    ASSERT(j->inflight && j->in_win && j->user->head == j);
    j->inflight = false;
    j->dest->inflight--;
    o->inflight--;
    o->parts[j->partition].inflight--;
}

/* An orphan came back: whatever its outcome, it only frees its slot. */
static bool orphan_done(Order *o, OrderJob *j)
{
    if (!j->orphan)
        return false;
    ASSERT(j->inflight && o->parts[j->partition].orphans > 0);
    j->dest->inflight--;
    o->inflight--;
    o->parts[j->partition].orphans--;
    o->orphans--;
    order_job_free(j);
    return true;
}

/* The head is done or dead: the next job of the user (if any) is head. */
static void head_finished(Order *o, OrderJob *j, int64_t now)
{
    OrderUser *u = j->user;
    win_unlink_head(u);
    if (u->head && u->head->row)
        u->head->parked = false;
    settle(o, u, now);
    maybe_free(o, j);
}

void order_ok(Order *o, OrderJob *j, int64_t now)
{
    if (orphan_done(o, j))
        return;
    end_inflight(o, j);
    j->fate = ORDER_DONE;
    if (j->row)
        mark_dirty(o, j); /* its row goes */
    else
        j->durable = true;
    head_finished(o, j, now);
}

void order_note_failure(OrderJob *j, int64_t now)
{
    j->attempts++;
    if (j->first_failed_ms == 0)
        j->first_failed_ms = now;
}

static char *dup_text(const char *s, size_t n)
{
    return s ? utf8_dup_escaped(s, n, ORDER_TEXT_MAX) : NULL;
}

void order_abort(Order *o, OrderJob *j, int status, const char *reason, const char *response,
                 size_t response_len, int64_t now)
{
    if (orphan_done(o, j))
        return;
    end_inflight(o, j);
    j->fate = ORDER_DEAD;
    j->last_status = status;
    free(j->last_error);
    j->last_error = dup_text(reason, reason ? strlen(reason) : 0);
    free(j->response);
    j->response = dup_text(response, response_len);
    mark_dirty(o, j);
    head_finished(o, j, now);
}

void order_retry(Order *o, OrderJob *j, int status, const char *error, int64_t next_retry_ms,
                 int64_t now)
{
    if (orphan_done(o, j))
        return;
    end_inflight(o, j);
    OrderUser *u = j->user;
    j->row = true;
    j->parked = false;
    j->next_retry_ms = next_retry_ms;
    j->last_status = status;
    free(j->last_error);
    j->last_error = dup_text(error, error ? strlen(error) : 0);
    mark_dirty(o, j);
    /* everything behind it waits in rt_retries: unwritten jobs are parked,
     * loaded rows are dropped (they are there already) */
    OrderJob *f = j->next_win;
    j->next_win = NULL;
    u->tail = j;
    if (f != NULL)
        u->load_after = j->job_id;
    while (f != NULL && f->row) {
        OrderJob *n = f->next_win;
        f->next_win = NULL;
        f->in_win = false;
        f->user = NULL;
        u->more = true;
        if (f->dirty)
            park(o, f);
        else
            update_held(f);
        maybe_free(o, f);
        f = n;
    }
    park_chain(o, u, f); /* the memory-only jobs behind it */
    settle(o, u, now);
}

void order_lost(Order *o, OrderJob *j, int64_t now)
{
    if (orphan_done(o, j))
        return;
    end_inflight(o, j);
    settle(o, j->user, now);
}

/* ---- cursors ---- */

static int spill_part_before(Order *o, int p, int64_t th, int64_t now)
{
    int n = 0;
    for (OrderJob *j = o->parts[p].head; j; j = j->next_part) {
        if (j->durable || j->dirty || j->flush_gen != 0)
            continue; /* the cursor may pass it, or will after this flush */
        if (now - j->claimed_ms < th)
            break; /* later jobs were claimed later */
        if (j->in_win) {
            OrderUser *u = j->user;
            spill_user(o, u, now);
            o->stats.spilled_cursor++;
            n++;
            settle(o, u, now);
        }
    }
    return n;
}

static int spill_claimed_before(Order *o, int64_t th, int64_t now)
{
    int n = 0;
    for (int p = 0; p < o->nparts; p++)
        n += spill_part_before(o, p, th, now);
    return n;
}

int order_spill_blockers(Order *o, int64_t now)
{
    return spill_claimed_before(o, o->lim.spill_after_ms, now);
}

int order_spill_all(Order *o, int64_t now)
{
    ASSERT(o->inflight == 0);
    return spill_claimed_before(o, INT64_MIN / 2, now);
}

int order_spill_partition(Order *o, int p, int64_t now)
{
    ASSERT(p >= 0 && p < o->nparts && o->parts[p].inflight == 0);
    return spill_part_before(o, p, INT64_MIN / 2, now);
}

bool order_has_writes(const Order *o)
{
    return o->ndirty > 0;
}

bool order_flush_needed(const Order *o)
{
    if (o->ndirty > 0)
        return true;
    for (int p = 0; p < o->nparts; p++) {
        const OrderPart *pt = &o->parts[p];
        if (pt->head ? pt->head->durable : pt->read_cursor != pt->durable_cursor)
            return true;
    }
    return false;
}

void order_flush_begin(Order *o, OrderFlush *f)
{
    if (++o->gen <= 0)
        o->gen = 1;
    if (o->capfl < o->ndirty) {
        o->capfl = o->ndirty;
        o->fl_jobs = xrealloc(o->fl_jobs, sizeof(*o->fl_jobs) * (size_t)o->capfl);
    }
    memset(o->fl_mark, 0, (size_t)o->nparts);
    for (int i = 0; i < o->ndirty; i++) {
        OrderJob *j = o->dirty[i];
        j->dirty = false;
        j->flush_gen = o->gen;
        update_writing(o, j);
        o->fl_jobs[i] = j;
        o->fl_mark[j->partition] = 1;
    }
    f->jobs = o->fl_jobs;
    f->njobs = o->fl_njobs = o->ndirty;
    o->ndirty = 0;
    /* each cursor passes the jobs whose fate is durable or written now */
    int n = 0;
    for (int p = 0; p < o->nparts; p++) {
        OrderPart *pt = &o->parts[p];
        int64_t upto = pt->durable_cursor;
        while (pt->head && (pt->head->durable || pt->head->flush_gen == o->gen)) {
            OrderJob *j = pt->head;
            upto = j->job_id;
            pt->head = j->next_part;
            if (pt->head == NULL)
                pt->tail = NULL;
            j->next_part = NULL;
            j->in_part = false;
            maybe_free(o, j);
        }
        if (pt->head == NULL && pt->read_cursor > upto)
            upto = pt->read_cursor; /* every job read is resolved */
        if (upto != pt->durable_cursor) {
            o->fl_parts[n] = p;
            o->fl_old[n] = pt->durable_cursor;
            o->fl_new[n] = upto;
            o->fl_mark[p] = 1;
            n++;
        }
    }
    f->parts = o->fl_parts;
    f->old_ids = o->fl_old;
    f->new_ids = o->fl_new;
    f->nparts = o->fl_nmoves = n;
    f->ntouched = 0;
    for (int p = 0; p < o->nparts; p++)
        if (o->fl_mark[p])
            o->fl_touched[f->ntouched++] = p;
    f->touched = o->fl_touched;
    f->gen = o->gen;
}

void order_flush_done(Order *o, OrderFlush *f, int64_t now)
{
    ASSERT(f->gen == o->gen && f->jobs == o->fl_jobs && f->parts == o->fl_parts);
    for (int i = 0; i < o->fl_nmoves; i++)
        if (o->fl_parts[i] >= 0) /* not dropped since */
            o->parts[o->fl_parts[i]].durable_cursor = o->fl_new[i];
    for (int i = 0; i < o->fl_njobs; i++) {
        OrderJob *j = o->fl_jobs[i];
        if (j == NULL)
            continue; /* its partition was dropped */
        j->flush_gen = 0;
        j->durable = true;
        update_held(j);
        update_writing(o, j);
        if (j->in_win)
            settle(o, j->user, now); /* may evict the user, freeing j */
        else
            maybe_free(o, j);
    }
    f->njobs = o->fl_njobs = 0;
    f->nparts = o->fl_nmoves = 0;
}

/* ---- figures ---- */

int order_full_dests(const Order *o, const char **ids, int max)
{
    int n = 0;
    for (int i = 0; i < o->ndests && n < max; i++)
        if (dest_full(o, o->dest_list[i]))
            ids[n++] = o->dest_list[i]->id;
    return n;
}

const OrderStats *order_stats(const Order *o)
{
    return &o->stats;
}

int order_partitions(const Order *o)
{
    return o->nparts;
}

int order_jobs(const Order *o)
{
    return o->njobs;
}

int order_inflight(const Order *o)
{
    return o->inflight;
}

int order_users(const Order *o)
{
    return o->nusers;
}
