/* Rows coming back from rt_retries (see reload.h).
 *
 * The due scan reads at most min(room in memory, 256) heads with
 * next_retry_at <= now() after the scan position, of the partitions open
 * and not paused, leaving out destinations that hold as much as they may,
 * and at most twice a fair share (at least 16) of each partition, so a
 * page costs about the same whatever the number of partitions; a full page
 * goes on from its last row at once, a short one starts over after the
 * poll interval. rt_retries is never read whole, nor other
 * instances' partitions. A page load reads, for up to 32 users, up to 100
 * of each user's rows (of its partition) after the last one in memory, in
 * job order. */
#include "router/reload.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/buf.h"
#include "common/xalloc.h"

/* Rows of one due scan, users per page load, rows per user and page. */
#define DUE_PAGE   256
#define LOAD_USERS 32
#define LOAD_PAGE  100
#define MAX_FULL   64

typedef enum Kind { KIND_NONE, KIND_DUE, KIND_LOAD } Kind;

struct Reload {
    const RouterConfig *rc;
    Order *order;
    Kind sent;
    Buf params;
    /* the due scan's position: rows after (due_at_text, due_after_id) */
    int64_t due_next_ms;
    char due_at_text[64];
    int64_t due_after_id;
    int due_limit;
    char id_text[32], limit_text[16], per_text[16];
    int due_per; /* rows read per partition by the due scan in flight */
    int *parts;  /* scratch: partitions to scan */
    int64_t *cursors;
    /* the page load in flight */
    OrderUser *load_users[LOAD_USERS];
    int64_t load_after[LOAD_USERS];
    int nload;
    OrderJob **load_jobs;
    int cap_load_jobs;
};

Reload *reload_create(const RouterConfig *rc, Order *o)
{
    Reload *r = xcalloc(1, sizeof(*r));
    r->rc = rc;
    r->order = o;
    buf_init(&r->params);
    r->parts = xmalloc(sizeof(int) * (size_t)order_partitions(o));
    r->cursors = xmalloc(sizeof(int64_t) * (size_t)order_partitions(o));
    reload_rewind(r);
    return r;
}

void reload_destroy(Reload *r)
{
    if (r == NULL)
        return;
    buf_deinit(&r->params);
    free(r->parts);
    free(r->cursors);
    free(r->load_jobs);
    free(r);
}

static void due_restart(Reload *r)
{
    snprintf(r->due_at_text, sizeof r->due_at_text, "-infinity");
    r->due_after_id = 0;
}

void reload_rewind(Reload *r)
{
    due_restart(r);
    r->due_next_ms = 0;
    r->nload = 0;
    r->sent = KIND_NONE;
}

static bool has_room(const Reload *r)
{
    return order_jobs(r->order) < r->rc->max_pending_jobs;
}

bool reload_wanted(const Reload *r, int64_t now)
{
    return has_room(r) && (order_loads_wanted(r->order) || now >= r->due_next_ms);
}

static bool format_load(Reload *r, StoreStmt *st)
{
    r->nload = order_take_loads(r->order, r->load_users, r->load_after, LOAD_USERS, LOAD_PAGE);
    if (r->nload == 0)
        return false;
    const char *dests[LOAD_USERS], *users[LOAD_USERS];
    int parts[LOAD_USERS];
    for (int i = 0; i < r->nload; i++) {
        dests[i] = order_user_dest(r->load_users[i]);
        users[i] = order_user_id(r->load_users[i]);
        parts[i] = order_user_partition(r->load_users[i]);
    }
    Buf *b = &r->params;
    buf_reset(b);
    store_put_text_array(b, dests, r->nload);
    size_t off_users = b->len + 1;
    buf_putc(b, '\0');
    store_put_text_array(b, users, r->nload);
    size_t off_after = b->len + 1;
    buf_putc(b, '\0');
    store_put_int64_array(b, r->load_after, r->nload);
    size_t off_parts = b->len + 1;
    buf_putc(b, '\0');
    store_put_int_array(b, parts, r->nload);
    snprintf(r->limit_text, sizeof r->limit_text, "%d", LOAD_PAGE);
    *st = (StoreStmt){.step = "load_retries",
                      .sql = STORE_SQL_LOAD,
                      .nparams = 5,
                      .params = {b->data, b->data + off_users, b->data + off_after, r->limit_text,
                                 b->data + off_parts}};
    r->sent = KIND_LOAD;
    return true;
}

static bool format_due(Reload *r, StoreStmt *st)
{
    int room = r->rc->max_pending_jobs - order_jobs(r->order);
    if (room <= 0)
        return false;
    int nparts = order_claim_cursors(r->order, r->parts, r->cursors);
    if (nparts == 0)
        return false;
    r->due_limit = room < DUE_PAGE ? room : DUE_PAGE;
    const char *full[MAX_FULL];
    int nfull = order_full_dests(r->order, full, MAX_FULL);
    Buf *b = &r->params;
    buf_reset(b);
    store_put_text_array(b, full, nfull);
    size_t off_parts = b->len + 1;
    buf_putc(b, '\0');
    store_put_int_array(b, r->parts, nparts);
    r->due_per = store_due_per_partition(r->due_limit, nparts);
    snprintf(r->id_text, sizeof r->id_text, "%" PRId64, r->due_after_id);
    snprintf(r->limit_text, sizeof r->limit_text, "%d", r->due_limit);
    snprintf(r->per_text, sizeof r->per_text, "%d", r->due_per);
    *st = (StoreStmt){.step = "due_scan",
                      .sql = STORE_SQL_DUE,
                      .nparams = 6,
                      .params = {r->due_at_text, r->id_text, b->data, r->limit_text,
                                 b->data + off_parts, r->per_text}};
    order_due_begin(r->order);
    r->sent = KIND_DUE;
    return true;
}

bool reload_format(Reload *r, int64_t now, StoreStmt *st)
{
    if (!has_room(r))
        return false;
    if (order_loads_wanted(r->order) && format_load(r, st))
        return true;
    return now >= r->due_next_ms && format_due(r, st);
}

static void push_due(Reload *r, const PGresult *res, int64_t now)
{
    bool more;
    int n = store_due_take(res, r->due_limit, r->due_per, &more);
    for (int i = 0; i < n; i++)
        order_push_due(r->order, store_retry_job(res, i), now);
    order_due_end(r->order, now);
    if (more && n > 0) {
        /* a full page: go on from its last row at once */
        snprintf(r->due_at_text, sizeof r->due_at_text, "%s",
                 PQgetvalue(res, n - 1, STORE_DUE_AT_COL));
        r->due_after_id = strtoll(PQgetvalue(res, n - 1, 0), NULL, 10);
        r->due_next_ms = now;
    } else {
        due_restart(r);
        r->due_next_ms = now + r->rc->poll_interval_ms;
    }
}

static void push_loaded(Reload *r, const PGresult *res, int64_t now)
{
    int n = PQntuples(res);
    int row = 0;
    for (int k = 0; k < r->nload; k++) {
        int m = 0;
        while (row < n && atoi(PQgetvalue(res, row, STORE_LOAD_INDEX_COL)) == k + 1) {
            if (m == r->cap_load_jobs) {
                r->cap_load_jobs = r->cap_load_jobs ? r->cap_load_jobs * 2 : LOAD_PAGE;
                r->load_jobs =
                    xrealloc(r->load_jobs, sizeof(OrderJob *) * (size_t)r->cap_load_jobs);
            }
            r->load_jobs[m++] = store_retry_job(res, row++);
        }
        order_push_loaded(r->order, r->load_users[k], r->load_jobs, m, m == LOAD_PAGE, now);
    }
    r->nload = 0;
}

void reload_push(Reload *r, const PGresult *res, int64_t now)
{
    Kind k = r->sent;
    r->sent = KIND_NONE;
    if (k == KIND_DUE)
        push_due(r, res, now);
    else if (k == KIND_LOAD)
        push_loaded(r, res, now);
}
