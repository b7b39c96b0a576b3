/* Tests router/order.c: the per-user ordering and parking state machine.
 * Each test drives it the way the engine does (claims, deliveries, flushes,
 * loads from rt_retries) and checks what it asks to write, how far the
 * cursors move and what stays in memory. Run under ASan for the leak
 * checks (make BUILD=build-asan SANITIZE=address,undefined). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router/order.h"

#define NPARTS 4

static const OrderLimits LIMITS = {
    .max_jobs = 1000, .max_inflight_per_dest = 4, .max_held_per_dest = 100, .spill_after_ms = 1000};

static Order *new_order(const OrderLimits *lim)
{
    Order *o = order_create(lim ? lim : &LIMITS, NPARTS);
    for (int p = 0; p < NPARTS; p++)
        order_add_partition(o, p, 0);
    return o;
}

static OrderJob *job(int64_t id, int part, const char *dest, const char *user)
{
    char payload[64];
    snprintf(payload, sizeof payload, "{\"id\":%lld}", (long long)id);
    return order_job_create(id, part, "ws", "src", dest, user, payload, strlen(payload));
}

static void claim(Order *o, int64_t id, int part, const char *dest, const char *user, bool rows,
                  int64_t now)
{
    order_push_claimed(o, job(id, part, dest, user), rows ? ORDER_ROWS_USER : ORDER_ROWS_NONE, now);
}

/* A row as rt_retries returns it (due scan or page load). */
static OrderJob *row(int64_t id, int part, const char *dest, const char *user, int attempts)
{
    OrderJob *j = job(id, part, dest, user);
    j->attempts = attempts;
    if (attempts > 0) {
        j->first_failed_ms = 1;
        j->next_retry_ms = 500;
    }
    return j;
}

/* What one flush wrote, in a form easy to assert on. */
typedef struct Written {
    int n;
    int64_t id[64];
    char kind[64]; /* 'H' head row, 'P' parked row, 'D' delete, 'X' dead letter, '-' none */
    int64_t cursor[NPARTS];
    int nmoved;
} Written;

static char kind_of(const OrderJob *j)
{
    if (j->fate == ORDER_PENDING)
        return j->row ? (j->parked ? 'P' : 'H') : '-';
    if (j->fate == ORDER_DEAD)
        return 'X';
    return j->row ? 'D' : '-';
}

static Written flush(Order *o, int64_t now)
{
    Written w;
    memset(&w, 0, sizeof w);
    for (int p = 0; p < NPARTS; p++)
        w.cursor[p] = -1;
    OrderFlush f;
    order_flush_begin(o, &f);
    for (int i = 0; i < f.njobs && i < 64; i++) {
        w.id[w.n] = f.jobs[i]->job_id;
        w.kind[w.n] = kind_of(f.jobs[i]);
        w.n++;
    }
    for (int i = 0; i < f.nparts; i++)
        w.cursor[f.parts[i]] = f.new_ids[i];
    w.nmoved = f.nparts;
    order_flush_done(o, &f, now);
    return w;
}

static char written(const Written *w, int64_t id)
{
    for (int i = 0; i < w->n; i++)
        if (w->id[i] == id)
            return w->kind[i];
    return 0;
}

static OrderJob *take(Order *o, int64_t now)
{
    return order_take_ready(o, now);
}

static void test_memory_only_users_flow_without_rows(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "a", false, 0);
    claim(o, 3, 0, "d", "b", false, 0);
    OrderJob *a1 = take(o, 0), *b = take(o, 0);
    assert_int_equal(a1->job_id, 1);
    assert_int_equal(b->job_id, 3);
    assert_null(take(o, 0)); /* a's second job waits for its first */
    order_ok(o, b, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.n, 0);
    assert_int_equal(w.cursor[0], -1); /* job 1 is not durable: the cursor waits */
    order_ok(o, a1, 0);
    OrderJob *a2 = take(o, 0);
    assert_int_equal(a2->job_id, 2);
    order_ok(o, a2, 0);
    w = flush(o, 0);
    assert_int_equal(w.n, 0); /* successes leave no row */
    assert_int_equal(w.cursor[0], 3);
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    order_destroy(o);
}

static void test_failed_head_parks_followers_and_leaves_memory(void **state)
{
    Order *o = new_order(NULL);
    for (int i = 1; i <= 3; i++)
        claim(o, i, 1, "d", "a", false, 0);
    OrderJob *a1 = take(o, 0);
    order_note_failure(a1, 10);
    order_retry(o, a1, 500, "destination answered 500", 10000, 10);
    assert_null(take(o, 20));
    Written w = flush(o, 20);
    assert_int_equal(written(&w, 1), 'H');
    assert_int_equal(written(&w, 2), 'P');
    assert_int_equal(written(&w, 3), 'P');
    assert_int_equal(w.cursor[1], 3); /* all durable: the cursor passes them */
    /* the waiting head is in rt_retries: nothing stays in memory */
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    /* a later job of the user is parked behind the rows the claim saw */
    claim(o, 4, 1, "d", "a", true, 30);
    assert_null(take(o, 30));
    w = flush(o, 30);
    assert_int_equal(written(&w, 4), 'P');
    assert_int_equal(w.cursor[1], 4);
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* The due head comes back, succeeds, and the user's parked rows are loaded
 * a page at a time and delivered in order. */
static void test_due_head_then_pages_in_order(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 2, "d", "a", 1), 1000));
    OrderJob *h = take(o, 1000);
    assert_int_equal(h->job_id, 1);
    order_ok(o, h, 1000);
    assert_true(order_loads_wanted(o));
    OrderUser *users[4];
    int64_t after[4];
    /* loads wait for pending writes to be flushed (the engine's rule) */
    Written w = flush(o, 1000);
    assert_int_equal(written(&w, 1), 'D');
    assert_int_equal(order_take_loads(o, users, after, 4, 2), 1);
    assert_int_equal(after[0], 1);
    assert_string_equal(order_user_id(users[0]), "a");
    assert_string_equal(order_user_dest(users[0]), "d");
    OrderJob *page[2] = {row(5, 2, "d", "a", 0), row(7, 2, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, true, 1000);
    OrderJob *j = take(o, 1000);
    assert_int_equal(j->job_id, 5);
    assert_false(j->parked); /* it is the head now */
    assert_null(take(o, 1000));
    order_ok(o, j, 1000);
    j = take(o, 1000);
    assert_int_equal(j->job_id, 7);
    order_ok(o, j, 1000);
    flush(o, 1000);
    assert_int_equal(order_take_loads(o, users, after, 4, 2), 1);
    assert_int_equal(after[0], 7);
    OrderJob *last[1] = {row(9, 2, "d", "a", 0)};
    order_push_loaded(o, users[0], last, 1, false, 1000);
    j = take(o, 1000);
    assert_int_equal(j->job_id, 9);
    order_ok(o, j, 1000);
    w = flush(o, 1000);
    assert_int_equal(written(&w, 9), 'D');
    /* no rows left: the user is memory-only again */
    assert_false(order_loads_wanted(o));
    assert_int_equal(order_users(o), 0);
    claim(o, 11, 2, "d", "a", false, 1000);
    j = take(o, 1000);
    assert_int_equal(j->job_id, 11);
    assert_false(j->row);
    order_ok(o, j, 1000);
    order_destroy(o);
}

/* Issue 7 item 3: a parked row became head and then failed; a follower
 * claimed meanwhile must be parked (durable), so the cursor passes it. */
static void test_follower_of_promoted_head_that_fails_is_parked(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 2), 1000));
    OrderJob *h = take(o, 1000);
    order_ok(o, h, 1000);
    flush(o, 1000);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    OrderJob *page[1] = {row(2, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 1, false, 1000);
    OrderJob *p = take(o, 1000); /* the parked row is head, in flight */
    assert_int_equal(p->job_id, 2);
    /* claimed while the head is in flight: memory holds all of the user's
     * rows (the page was not full), so they wait in memory behind it,
     * whatever the claim said about rows */
    claim(o, 10, 0, "d", "a", true, 1000);
    claim(o, 11, 0, "d", "a", false, 1000);
    assert_null(take(o, 1000));
    order_note_failure(p, 1010);
    order_retry(o, p, 503, "destination answered 503", 60000, 1010);
    Written w = flush(o, 1010);
    assert_int_equal(written(&w, 2), 'H');
    assert_int_equal(written(&w, 10), 'P');
    assert_int_equal(written(&w, 11), 'P');
    assert_int_equal(w.cursor[0], 11);
    assert_int_equal(order_jobs(o), 0); /* nothing left in memory to be redelivered */
    assert_null(take(o, 2000));
    order_destroy(o);
}

/* The same, with the follower claimed before the loaded head was taken. */
static void test_follower_claimed_before_loaded_head_fails(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 1), 1000));
    order_ok(o, take(o, 1000), 1000);
    flush(o, 1000);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    OrderJob *page[2] = {row(2, 0, "d", "a", 0), row(3, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, false, 1000);
    claim(o, 10, 0, "d", "a", false, 1000);
    OrderJob *p = take(o, 1000);
    order_note_failure(p, 1000);
    order_retry(o, p, 500, "x", 9000, 1000);
    Written w = flush(o, 1000);
    assert_int_equal(written(&w, 2), 'H');
    assert_int_equal(written(&w, 3), 0); /* a loaded row: already in rt_retries */
    assert_int_equal(written(&w, 10), 'P');
    assert_int_equal(w.cursor[0], 10);
    assert_int_equal(order_jobs(o), 0);
    /* the head comes back when due; its followers are loaded after it */
    assert_true(order_push_due(o, row(2, 0, "d", "a", 1), 9000));
    order_ok(o, take(o, 9000), 9000);
    flush(o, 9000);
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    assert_int_equal(after[0], 2);
    order_push_loaded(o, users[0], NULL, 0, false, 9000);
    order_destroy(o);
}

/* A destination that never answers: the user whose job holds the cursor is
 * spilled; the cursor passes everything, including other destinations'. */
static void test_cursor_blocker_is_spilled(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 3, "hang", "a", false, 0);
    claim(o, 2, 3, "ok", "b", false, 0);
    claim(o, 3, 3, "hang", "a", false, 0);
    OrderJob *a1 = take(o, 0), *b = take(o, 0);
    assert_int_equal(a1->job_id, 1);
    order_ok(o, b, 10);
    assert_int_equal(order_spill_blockers(o, 500), 0); /* not old enough */
    Written w = flush(o, 500);
    assert_int_equal(w.cursor[3], -1);
    assert_int_equal(order_spill_blockers(o, 1500), 1);
    w = flush(o, 1500);
    assert_int_equal(written(&w, 1), 'H'); /* still in flight, due at once after a crash */
    assert_int_equal(written(&w, 3), 'P');
    assert_int_equal(w.cursor[3], 3);
    assert_int_equal(order_jobs(o), 1); /* only the head in flight */
    /* a later job waits in memory behind the head in flight, until it too
     * has kept the cursor waiting too long */
    claim(o, 4, 3, "hang", "a", false, 1600);
    w = flush(o, 1600);
    assert_int_equal(written(&w, 4), 0);
    assert_int_equal(w.cursor[3], -1);
    assert_int_equal(order_spill_blockers(o, 2000), 0);
    assert_int_equal(order_spill_blockers(o, 2700), 1);
    w = flush(o, 2700);
    assert_int_equal(written(&w, 4), 'P');
    assert_int_equal(w.cursor[3], 4);
    /* it times out: a retry of the head's row; then it leaves memory */
    order_note_failure(a1, 31500);
    order_retry(o, a1, 0, "Operation timed out", 41500, 31500);
    w = flush(o, 31500);
    assert_int_equal(written(&w, 1), 'H');
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* A destination at its memory budget cannot take more: its new users wait
 * in rt_retries, and another destination keeps flowing. */
static void test_destination_budget(void **state)
{
    OrderLimits lim = LIMITS;
    lim.max_held_per_dest = 3;
    lim.max_inflight_per_dest = 1;
    lim.max_jobs = 6; /* memory runs short from 5 jobs on */
    Order *o = new_order(&lim);
    claim(o, 1, 0, "slow", "u1", false, 0);
    OrderJob *s1 = take(o, 0);
    claim(o, 7, 0, "fast", "f", false, 0); /* another destination is active */
    for (int i = 2; i <= 6; i++) {
        char u[8];
        snprintf(u, sizeof u, "u%d", i);
        claim(o, i, 0, "slow", u, false, 0);
    }
    const char *full[4];
    assert_int_equal(order_full_dests(o, full, 4), 1);
    assert_string_equal(full[0], "slow");
    OrderJob *f = take(o, 0);
    assert_int_equal(f->job_id, 7);
    order_ok(o, f, 0);
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 4), 'H');
    assert_int_equal(written(&w, 5), 'H');
    assert_int_equal(written(&w, 6), 'H');
    assert_int_equal(written(&w, 2), 0);
    /* the spilled users left memory; the due scan brings them back later */
    assert_int_equal(order_users(o), 3);
    assert_false(order_push_due(o, row(4, 0, "slow", "u4", 0), 0)); /* still full */
    order_ok(o, s1, 0);
    flush(o, 0);
    order_ok(o, take(o, 0), 0);
    order_ok(o, take(o, 0), 0);
    assert_int_equal(order_full_dests(o, full, 4), 0);
    assert_true(order_push_due(o, row(4, 0, "slow", "u4", 0), 0));
    OrderJob *j = take(o, 0);
    assert_int_equal(j->job_id, 4);
    order_ok(o, j, 0);
    order_destroy(o);
}

static void test_abort_stores_valid_utf8(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    OrderJob *j = take(o, 0);
    char body[4100];
    body[0] = (char)0xff;
    memset(body + 1, 'a', 4094);
    memcpy(body + 4095, "\xe2\x82\xac", 3); /* the euro sign crosses byte 4096 */
    body[4098] = 'z';
    order_note_failure(j, 0);
    order_abort(o, j, 400, "bad \xc3", body, 4099, 0);
    assert_string_equal(j->last_error, "bad \\xc3");
    assert_int_equal(strlen(j->response), 4 + 4094);
    assert_memory_equal(j->response, "\\xff", 4);
    assert_int_equal(j->response[strlen(j->response) - 1], 'a');
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 1), 'X');
    assert_int_equal(w.cursor[0], 1);
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* Issue 7 item 10: a flush that fails leaves jobs referred to only by that
 * flush; dropping the state frees them all (LeakSanitizer checks). */
static void test_failed_flush_reset_frees_everything(void **state)
{
    Order *o = new_order(NULL);
    for (int i = 1; i <= 20; i++)
        claim(o, i, i % NPARTS, "d", i % 2 ? "a" : "b", false, 0);
    OrderJob *a = take(o, 0), *b = take(o, 0);
    order_note_failure(a, 0);
    order_abort(o, a, 400, "no", "body", 4, 0);
    order_note_failure(b, 0);
    order_retry(o, b, 500, "later", 5000, 0);
    assert_true(order_push_due(o, row(100, 0, "e", "z", 1), 0));
    order_ok(o, take(o, 0), 0); /* a row done: its delete is pending */
    OrderFlush f;
    order_flush_begin(o, &f);
    assert_true(f.njobs > 0);
    claim(o, 21, 1, "d", "a", false, 0); /* while the flush is in progress */
    order_reset(o);                      /* the flush failed */
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    assert_false(order_flush_needed(o) && order_has_writes(o));
    int64_t cur[NPARTS] = {5, 6, 7, 8};
    for (int p = 0; p < NPARTS; p++)
        order_add_partition(o, p, cur[p]);
    claim(o, 30, 1, "d", "a", false, 0);
    OrderJob *j = take(o, 0);
    assert_int_equal(j->job_id, 30);
    order_ok(o, j, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.cursor[1], 30);
    order_destroy(o);
}

/* Memory knows better than a claim's has_rows about users it holds. */
static void test_memory_overrides_stale_has_rows(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "a", true, 0); /* e.g. a row whose delete is not flushed yet */
    OrderJob *j = take(o, 0);
    order_ok(o, j, 0);
    j = take(o, 0);
    assert_int_equal(j->job_id, 2);
    assert_false(j->row);
    order_ok(o, j, 0);
    /* a due row of a user in memory is left to memory */
    claim(o, 3, 0, "d", "b", false, 0);
    assert_false(order_push_due(o, row(1, 0, "d", "b", 1), 0));
    order_ok(o, take(o, 0), 0);
    order_destroy(o);
}

static void test_lost_delivery_records_nothing(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    OrderJob *j = take(o, 0);
    order_lost(o, j, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.n, 0);
    assert_int_equal(w.cursor[0], -1);
    assert_ptr_equal(take(o, 0), j); /* still its user's head */
    order_lost(o, j, 0);
    order_destroy(o);
}

static void test_inflight_limit_and_round_robin(void **state)
{
    OrderLimits lim = LIMITS;
    lim.max_inflight_per_dest = 2;
    Order *o = new_order(&lim);
    for (int i = 0; i < 4; i++) {
        char u[8];
        snprintf(u, sizeof u, "u%d", i);
        claim(o, 1 + i, 0, "x", u, false, 0);
        claim(o, 11 + i, 0, "y", u, false, 0);
    }
    OrderJob *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = take(o, 0);
    assert_null(take(o, 0));
    int x = 0;
    for (int i = 0; i < 4; i++)
        x += strcmp(t[i]->dest_id, "x") == 0;
    assert_int_equal(x, 2);
    for (int i = 0; i < 4; i++)
        order_ok(o, t[i], 0);
    for (OrderJob *j; (j = take(o, 0)) != NULL;)
        order_ok(o, j, 0);
    assert_int_equal(order_jobs(o), 8); /* delivered, waiting for the flush */
    Written w = flush(o, 0);
    assert_int_equal(w.cursor[0], 14);
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* A crash between the delete of a head and the load of the next rows
 * loses nothing: the flush that deleted it promoted the next row (SQL),
 * and a new term finds it with the due scan. Here: the retry of a job
 * whose predecessor's delete is in the same flush. */
static void test_done_and_retry_in_one_flush(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 1), 0));
    order_ok(o, take(o, 0), 0);
    flush(o, 0);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    OrderJob *page[2] = {row(2, 0, "d", "a", 0), row(3, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, false, 0);
    order_ok(o, take(o, 0), 0); /* 2 done */
    OrderJob *j = take(o, 0);   /* 3 fails before the flush */
    order_note_failure(j, 0);
    order_retry(o, j, 500, "x", 1000, 0);
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 2), 'D');
    assert_int_equal(written(&w, 3), 'H');
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* Jobs claimed while a user catches up wait in memory behind its rows (not
 * written at all), and once the rows are delivered it is memory-only. */
static void test_caught_up_user_is_memory_only_again(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 1), 0));
    claim(o, 5, 0, "d", "a", true, 0);
    order_ok(o, take(o, 0), 0);
    assert_null(take(o, 0)); /* rows may come before job 5: load them first */
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 1), 'D');
    assert_int_equal(written(&w, 5), 0);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    assert_int_equal(after[0], 1);
    OrderJob *page[1] = {row(3, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 1, false, 0); /* the last rows */
    claim(o, 6, 0, "d", "a", true, 0);
    claim(o, 7, 0, "d", "a", false, 0);
    for (int64_t id = 3; id <= 7; id++) {
        if (id == 4)
            continue;
        OrderJob *j = take(o, 0);
        assert_int_equal(j->job_id, id);
        assert_int_equal(j->row, id == 3);
        assert_null(take(o, 0));
        order_ok(o, j, 0);
    }
    w = flush(o, 0);
    assert_int_equal(w.n, 1);
    assert_int_equal(written(&w, 3), 'D');
    assert_int_equal(w.cursor[0], 7);
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    order_destroy(o);
}

/* A destination over its budget: a user with loaded rows and memory-only
 * jobs behind them has the memory-only ones written behind the rows. */
static void test_budget_spills_memory_only_followers_of_rows(void **state)
{
    OrderLimits lim = LIMITS;
    lim.max_held_per_dest = 3;
    lim.max_jobs = 4;
    Order *o = new_order(&lim);
    claim(o, 50, 1, "other", "x", false, 0); /* another destination is active */
    order_ok(o, take(o, 0), 0);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 1), 0));
    order_ok(o, take(o, 0), 0);
    flush(o, 0);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    OrderJob *page[2] = {row(2, 0, "d", "a", 0), row(3, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, false, 0);
    claim(o, 4, 0, "d", "a", false, 0);
    claim(o, 5, 0, "d", "a", false, 0); /* over the budget */
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 2), 0);
    assert_int_equal(written(&w, 4), 'P');
    assert_int_equal(written(&w, 5), 'P');
    assert_int_equal(w.cursor[0], 5);
    for (int64_t id = 2; id <= 3; id++) {
        OrderJob *j = take(o, 0);
        assert_int_equal(j->job_id, id);
        order_ok(o, j, 0);
    }
    flush(o, 0);
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    assert_int_equal(after[0], 3);
    OrderJob *rest[2] = {row(4, 0, "d", "a", 0), row(5, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], rest, 2, false, 0);
    for (int64_t id = 4; id <= 5; id++) {
        OrderJob *j = take(o, 0);
        assert_int_equal(j->job_id, id);
        order_ok(o, j, 0);
    }
    order_destroy(o);
}

/* A destination alone over its budget keeps its backlog in memory: moving
 * it to rt_retries would help nobody. */
static void test_budget_alone_spills_nothing(void **state)
{
    OrderLimits lim = LIMITS;
    lim.max_held_per_dest = 2;
    lim.max_jobs = 4;
    Order *o = new_order(&lim);
    for (int i = 1; i <= 6; i++)
        claim(o, i, i % NPARTS, "d", i % 2 ? "a" : "b", false, 100000);
    Written w = flush(o, 100000);
    assert_int_equal(w.n, 0);
    for (OrderJob *j; (j = take(o, 100000)) != NULL;)
        order_ok(o, j, 100000);
    for (OrderJob *j; (j = take(o, 100000)) != NULL;)
        order_ok(o, j, 100000);
    for (OrderJob *j; (j = take(o, 100000)) != NULL;)
        order_ok(o, j, 100000);
    w = flush(o, 100000);
    assert_int_equal(w.n, 0);
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* After a crash, a job can be claimed again although its row was written
 * (its cursor had not passed it): the row stands for it, it is not queued
 * or written a second time. */
static void test_claimed_job_with_its_own_row(void **state)
{
    Order *o = new_order(NULL);
    order_push_claimed(o, job(3, 1, "d", "a"), ORDER_ROWS_OWN, 0);
    claim(o, 4, 1, "d", "a", true, 0);
    assert_null(take(o, 0));
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 3), 0);
    assert_int_equal(written(&w, 4), 'P');
    assert_int_equal(w.cursor[1], 4);
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* A due scan reads the table while the last row of a user is delivered:
 * that row (its delete not written yet) must not be delivered again. */
static void test_due_scan_racing_the_last_row(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 0, "d", "a", 1), 0));
    order_ok(o, take(o, 0), 0);
    flush(o, 0);
    OrderUser *users[1];
    int64_t after[1];
    assert_int_equal(order_take_loads(o, users, after, 1, 10), 1);
    OrderJob *page[2] = {row(2, 0, "d", "a", 0), row(3, 0, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, false, 0);
    order_ok(o, take(o, 0), 0);
    flush(o, 0); /* 2 deleted, 3 promoted: a due head in the table */
    order_due_begin(o);
    OrderJob *j = take(o, 0);
    assert_int_equal(j->job_id, 3);
    order_ok(o, j, 0); /* the user's last row: delivered while the scan runs */
    assert_false(order_push_due(o, row(3, 0, "d", "a", 0), 0));
    order_due_end(o, 0);
    assert_null(take(o, 0));
    assert_int_equal(order_users(o), 0);
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 3), 'D');
    order_destroy(o);
}

/* A user evicted while a due scan runs (its head row waits in rt_retries,
 * over budget) stays known until the scan ends, then leaves: it must not
 * ask to load the rows after a head that was never delivered, and a job
 * claimed meanwhile is parked behind its rows. */
static void test_user_evicted_during_due_scan_leaves(void **state)
{
    OrderLimits lim = {.max_jobs = 8,
                       .max_inflight_per_dest = 4,
                       .max_held_per_dest = 2,
                       .spill_after_ms = 100000};
    Order *o = new_order(&lim);
    assert_true(order_push_due(o, row(10, 0, "d", "u", 1), 0));
    order_ok(o, take(o, 0), 0);
    flush(o, 0);
    OrderUser *users[4];
    int64_t after[4];
    assert_int_equal(order_take_loads(o, users, after, 4, 100), 1);
    assert_int_equal(after[0], 10);
    OrderJob *page[5];
    for (int i = 0; i < 5; i++)
        page[i] = row(11 + i, 0, "d", "u", 0);
    order_push_loaded(o, users[0], page, 5, true, 0);
    OrderJob *r = take(o, 0);
    assert_int_equal(r->job_id, 11);
    for (int i = 0; i < 4; i++) {
        char u[8];
        snprintf(u, sizeof u, "e%d", i);
        claim(o, 100 + i, 1, "e", u, false, 0);
    }
    order_due_begin(o);
    order_ok(o, r, 0);                    /* head 12 is next; over budget, the user is evicted */
    claim(o, 200, 0, "d", "u", false, 0); /* the claim saw no rows: stale */
    order_due_end(o, 0);
    assert_false(order_loads_wanted(o));
    assert_int_equal(order_users(o), 4);
    for (OrderJob *x; (x = take(o, 0)) != NULL;) {
        assert_string_equal(x->dest_id, "e");
        order_ok(o, x, 0);
    }
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 11), 'D');
    assert_int_equal(written(&w, 200), 'P');
    assert_false(order_loads_wanted(o));
    /* the user is gone: the next due scan brings back its real head */
    assert_true(order_push_due(o, row(12, 0, "d", "u", 0), 0));
    OrderJob *h = take(o, 0);
    assert_int_equal(h->job_id, 12);
    order_ok(o, h, 0);
    order_destroy(o);
}

/* Shutdown: with deliveries ended, every claimed job the cursor cannot pass
 * gets a row, so the last flush moves the cursor past what was delivered
 * behind it (not delivered again after a restart). */
static void test_spill_all_at_stop_moves_cursors_past_everything(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "b", false, 0);
    claim(o, 3, 0, "d", "b", false, 0);
    OrderJob *x = take(o, 0), *y = take(o, 0);
    assert_int_equal(x->job_id, 1);
    assert_int_equal(y->job_id, 2);
    order_lost(o, x, 0); /* cancelled at shutdown */
    order_ok(o, y, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.nmoved, 0); /* job 1 holds the cursor */
    assert_int_equal(order_spill_all(o, 0), 2);
    w = flush(o, 0);
    assert_int_equal(written(&w, 1), 'H');
    assert_int_equal(written(&w, 3), 'H');
    assert_int_equal(w.cursor[0], 3);
    assert_false(order_flush_needed(o));
    order_destroy(o);
}

/* ---- partitions (leases) ---- */

/* A lost lease: everything of the partition goes at once, its delivery in
 * flight becomes an orphan whose answer records nothing, and the other
 * partitions go on untouched. */
static void test_drop_partition_forgets_it_and_keeps_others(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "a", false, 0);
    claim(o, 3, 0, "d", "b", false, 0);
    claim(o, 4, 1, "d", "c", false, 0);
    OrderJob *a1 = take(o, 0), *b = take(o, 0), *c = take(o, 0);
    assert_int_equal(a1->job_id, 1);
    assert_int_equal(b->job_id, 3);
    assert_int_equal(c->job_id, 4);
    order_note_failure(b, 0);
    order_retry(o, b, 500, "later", 5000, 0); /* a write pending for partition 0 */
    assert_true(order_has_writes(o));
    assert_int_equal(order_partition_inflight(o, 0), 1);

    order_drop_partition(o, 0);
    assert_false(order_partition_open(o, 0));
    assert_true(order_partition_open(o, 1));
    assert_false(order_has_writes(o));  /* b's row is not written */
    assert_int_equal(order_jobs(o), 1); /* c, in flight */
    assert_int_equal(order_users(o), 1);
    assert_int_equal(order_inflight(o), 2); /* a1 keeps its destination slot */
    assert_int_equal(order_partition_inflight(o, 0), 0);
    assert_true(order_job_dropped(a1));
    assert_false(order_job_dropped(c));
    /* its jobs are refused now: the claim was sent before the drop */
    assert_false(order_push_claimed(o, job(5, 0, "d", "a"), ORDER_ROWS_NONE, 0));
    assert_false(order_push_due(o, row(9, 0, "d", "z", 1), 0));
    int parts[NPARTS];
    int64_t cur[NPARTS];
    assert_int_equal(order_claim_cursors(o, parts, cur), NPARTS - 1);
    assert_int_equal(parts[0], 1);

    order_ok(o, a1, 0); /* the orphan's answer: nothing recorded */
    assert_int_equal(order_inflight(o), 1);
    order_ok(o, c, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.n, 0);
    assert_int_equal(w.nmoved, 1);
    assert_int_equal(w.cursor[1], 4);
    assert_int_equal(w.cursor[0], -1);

    /* taken again (at the next owner's cursor): it starts from there */
    order_add_partition(o, 0, 0);
    claim(o, 1, 0, "d", "a", false, 0);
    OrderJob *j = take(o, 0);
    assert_int_equal(j->job_id, 1);
    order_ok(o, j, 0);
    w = flush(o, 0);
    assert_int_equal(w.cursor[0], 1);
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    order_destroy(o);
}

/* Deliveries in flight when their partition is dropped are counted per
 * partition until they return, across the drop (a fenced flush drops
 * partitions still owned: they must not be opened again meanwhile), whatever
 * their outcome. */
static void test_orphans_counted_until_they_return(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "b", false, 0);
    claim(o, 3, 0, "d", "c", false, 0);
    claim(o, 4, 1, "d", "e", false, 0);
    OrderJob *a = take(o, 0), *b = take(o, 0), *c = take(o, 0), *e = take(o, 0);
    assert_int_equal(order_orphans(o), 0);
    order_drop_partition(o, 0);
    assert_int_equal(order_partition_orphans(o, 0), 3);
    assert_int_equal(order_partition_orphans(o, 1), 0);
    assert_int_equal(order_orphans(o), 3);
    assert_int_equal(order_partition_inflight(o, 0), 0);
    order_drop_partition(o, 0); /* closed already: nothing changes */
    assert_int_equal(order_partition_orphans(o, 0), 3);
    order_ok(o, a, 0);
    assert_int_equal(order_partition_orphans(o, 0), 2);
    order_note_failure(b, 0);
    order_retry(o, b, 503, "busy", 1000, 0);
    assert_int_equal(order_partition_orphans(o, 0), 1);
    assert_int_equal(order_orphans(o), 1);
    /* partition 1 dropped too: its orphan counts there */
    order_drop_partition(o, 1);
    assert_int_equal(order_partition_orphans(o, 1), 1);
    assert_int_equal(order_orphans(o), 2);
    order_lost(o, c, 0);
    order_note_failure(e, 0);
    order_abort(o, e, 400, "bad", "no", 2, 0);
    assert_int_equal(order_partition_orphans(o, 0), 0);
    assert_int_equal(order_partition_orphans(o, 1), 0);
    assert_int_equal(order_orphans(o), 0);
    assert_int_equal(order_inflight(o), 0);
    /* now it may be opened again */
    order_add_partition(o, 0, 0);
    assert_true(order_partition_open(o, 0));
    assert_int_equal(order_partition_orphans(o, 0), 0);
    order_destroy(o);
}

/* An orphan's failure or abort writes no row and no dead letter. */
static void test_dropped_partition_records_no_failure(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 2, "d", "a", false, 0);
    claim(o, 2, 2, "d", "b", false, 0);
    OrderJob *a = take(o, 0), *b = take(o, 0);
    order_drop_partition(o, 2);
    order_note_failure(a, 0);
    order_retry(o, a, 503, "busy", 1000, 0);
    order_note_failure(b, 0);
    order_abort(o, b, 400, "bad", "no", 2, 0);
    assert_int_equal(order_inflight(o), 0);
    assert_false(order_flush_needed(o));
    assert_int_equal(order_jobs(o), 0);
    order_destroy(o);
}

/* Dropped while a flush runs: the flush's other partitions become durable,
 * the dropped one's part of it is forgotten (its cursor too). */
static void test_drop_during_flush_in_progress(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 1, "d", "b", false, 0);
    claim(o, 3, 1, "d", "b", false, 0);
    OrderJob *a = take(o, 0), *b = take(o, 0);
    order_note_failure(a, 0);
    order_retry(o, a, 500, "x", 5000, 0);
    order_note_failure(b, 0);
    order_retry(o, b, 500, "x", 5000, 0);
    OrderFlush f;
    order_flush_begin(o, &f);
    assert_int_equal(f.njobs, 3); /* a's head; b's head and its parked follower */
    assert_int_equal(f.ntouched, 2);
    assert_int_equal(f.touched[0], 0);
    assert_int_equal(f.touched[1], 1);
    order_drop_partition(o, 0);
    order_flush_done(o, &f, 0);
    assert_int_equal(order_jobs(o), 0); /* b's rows durable and evicted; a gone */
    assert_int_equal(order_users(o), 0);
    assert_false(order_flush_needed(o));
    order_add_partition(o, 0, 7);
    int parts[NPARTS];
    int64_t cur[NPARTS];
    assert_int_equal(order_claim_cursors(o, parts, cur), NPARTS);
    assert_int_equal(cur[0], 7); /* the flush did not move it */
    assert_int_equal(cur[1], 3);
    order_destroy(o);
}

/* Dropped while its user's next page is read, while it waits in a ready
 * list, or while a due scan runs: nothing dangles (ASan). */
static void test_drop_with_load_ready_and_due_scan_in_flight(void **state)
{
    Order *o = new_order(NULL);
    assert_true(order_push_due(o, row(1, 3, "d", "a", 1), 0));
    order_ok(o, take(o, 0), 0);
    flush(o, 0);
    OrderUser *users[2];
    int64_t after[2];
    assert_int_equal(order_take_loads(o, users, after, 2, 10), 1);
    claim(o, 5, 3, "d", "r", false, 0); /* ready, not taken */
    claim(o, 6, 3, "d", "s", false, 0);
    OrderJob *s = take(o, 0);
    assert_int_equal(s->job_id, 5);
    order_ok(o, s, 0);
    order_due_begin(o); /* s's user is released while the scan runs: kept */
    order_drop_partition(o, 3);
    assert_int_equal(order_users(o), 0);
    OrderJob *page[2] = {row(2, 3, "d", "a", 0), row(3, 3, "d", "a", 0)};
    order_push_loaded(o, users[0], page, 2, false, 0); /* freed with the user */
    order_due_end(o, 0);
    assert_null(take(o, 0)); /* frees r's user from the ready list */
    assert_int_equal(order_jobs(o), 0);
    assert_false(order_loads_wanted(o));
    order_destroy(o);
}

/* Given back: no new work starts, in-flight deliveries return, claimed
 * jobs are spilled so the cursor passes them, and once flushed the
 * partition is idle; other partitions flow meanwhile. */
static void test_paused_partition_drains_to_idle(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 0, "d", "a", false, 0);
    claim(o, 2, 0, "d", "a", false, 0);
    claim(o, 3, 0, "d", "b", false, 0);
    OrderJob *a1 = take(o, 0);
    assert_int_equal(a1->job_id, 1);
    order_pause_partition(o, 0, true, 0);
    assert_null(take(o, 0)); /* b is not started */
    assert_false(order_push_claimed(o, job(4, 0, "d", "c"), ORDER_ROWS_NONE, 0));
    claim(o, 10, 1, "d", "x", false, 0);
    OrderJob *x = take(o, 0);
    assert_int_equal(x->job_id, 10); /* another partition goes on */
    order_ok(o, x, 0);
    assert_false(order_partition_idle(o, 0));
    order_ok(o, a1, 0);
    assert_null(take(o, 0)); /* a2 is not started either */
    assert_int_equal(order_partition_inflight(o, 0), 0);
    assert_int_equal(order_spill_partition(o, 0, 0), 2);
    assert_false(order_partition_idle(o, 0));
    Written w = flush(o, 0);
    assert_int_equal(written(&w, 2), 'H');
    assert_int_equal(written(&w, 3), 'H');
    assert_int_equal(w.cursor[0], 3); /* past everything claimed */
    assert_int_equal(w.cursor[1], 10);
    assert_true(order_partition_idle(o, 0));
    order_drop_partition(o, 0);
    assert_int_equal(order_jobs(o), 0);
    assert_int_equal(order_users(o), 0);
    order_destroy(o);
}

/* A pause that ends (the lease was renewed after all): work goes on. */
static void test_unpaused_partition_goes_on(void **state)
{
    Order *o = new_order(NULL);
    claim(o, 1, 2, "d", "a", false, 0);
    order_pause_partition(o, 2, true, 0);
    assert_null(take(o, 0));
    int parts[NPARTS];
    int64_t cur[NPARTS];
    assert_int_equal(order_claim_cursors(o, parts, cur), NPARTS - 1);
    order_pause_partition(o, 2, false, 0);
    OrderJob *j = take(o, 0);
    assert_non_null(j);
    assert_int_equal(j->job_id, 1);
    order_ok(o, j, 0);
    Written w = flush(o, 0);
    assert_int_equal(w.cursor[2], 1);
    order_destroy(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_only_users_flow_without_rows),
        cmocka_unit_test(test_failed_head_parks_followers_and_leaves_memory),
        cmocka_unit_test(test_due_head_then_pages_in_order),
        cmocka_unit_test(test_follower_of_promoted_head_that_fails_is_parked),
        cmocka_unit_test(test_follower_claimed_before_loaded_head_fails),
        cmocka_unit_test(test_cursor_blocker_is_spilled),
        cmocka_unit_test(test_destination_budget),
        cmocka_unit_test(test_abort_stores_valid_utf8),
        cmocka_unit_test(test_failed_flush_reset_frees_everything),
        cmocka_unit_test(test_memory_overrides_stale_has_rows),
        cmocka_unit_test(test_lost_delivery_records_nothing),
        cmocka_unit_test(test_inflight_limit_and_round_robin),
        cmocka_unit_test(test_done_and_retry_in_one_flush),
        cmocka_unit_test(test_caught_up_user_is_memory_only_again),
        cmocka_unit_test(test_budget_spills_memory_only_followers_of_rows),
        cmocka_unit_test(test_budget_alone_spills_nothing),
        cmocka_unit_test(test_claimed_job_with_its_own_row),
        cmocka_unit_test(test_due_scan_racing_the_last_row),
        cmocka_unit_test(test_user_evicted_during_due_scan_leaves),
        cmocka_unit_test(test_spill_all_at_stop_moves_cursors_past_everything),
        cmocka_unit_test(test_drop_partition_forgets_it_and_keeps_others),
        cmocka_unit_test(test_dropped_partition_records_no_failure),
        cmocka_unit_test(test_orphans_counted_until_they_return),
        cmocka_unit_test(test_drop_during_flush_in_progress),
        cmocka_unit_test(test_drop_with_load_ready_and_due_scan_in_flight),
        cmocka_unit_test(test_paused_partition_drains_to_idle),
        cmocka_unit_test(test_unpaused_partition_goes_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
