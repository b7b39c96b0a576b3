/* Tests processor/commit.c: the hand-off transaction of a batch (one
 * BEGIN ... COMMIT with the partition locks of the rt and batch_rt writes,
 * their COPYs in write order, the dead letters and the cursor advance of
 * exactly the partitions read) and the hints and counts after COMMIT;
 * user-transformation outputs (stage of their dead letters, filtered
 * counts, fan-out order, batch destinations). The
 * lease fence is covered end to end (tests/e2e/processor_leases.test.js). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/xalloc.h"
#include "processor/commit.h"

static void add_job(Batch *b, int i, int64_t id, int part, const char *user)
{
    Job *j = &b->jobs[i];
    j->job_id = id;
    j->partition = part;
    j->workspace_id = xstrdup("ws");
    j->source_id = xstrdup("src");
    j->user_id = xstrdup(user);
    j->text = xstrdup("{}");
    j->text_len = 2;
}

static const char *after(const char *s, const char *what)
{
    const char *p = strstr(s, what);
    assert_non_null(p);
    return p + strlen(what);
}

static void test_format(void **state)
{
    Batch b;
    route_batch_init(&b);
    b.njobs = 3;
    b.jobs = xcalloc(3, sizeof(Job));
    add_job(&b, 0, 11, 5, "u1");
    add_job(&b, 1, 12, 2, "u2");
    add_job(&b, 2, 13, 5, "u1");
    /* added out of order: written in job order */
    outputs_add_job(&b.outs, 2, 1, "d1", false, "{\"n\":3}", 7);
    outputs_add_job(&b.outs, 0, 1, "d1", false, "{\"n\":1}", 7);
    outputs_add_job(&b.outs, 1, 2, "d2", true, "{\"n\":2}", 7);
    outputs_add_dead(&b.outs, 1, 1, "d1", 400, DEAD_TRANSFORMER, "bad", 3, b.jobs[1].text);
    outputs_add_filtered(&b.outs, 0, 2, "d3");

    Commit c;
    commit_init(&c);
    int parts[] = {2, 5};
    int64_t olds[] = {1, 10}, news[] = {12, 13};
    CommitMoves m = {parts, olds, news, 2};
    commit_format(&c, &b, NULL, "rt_jobs_1", "batch_rt_jobs_1", &m);
    const char *sql = c.sql.data;
    assert_true(strncmp(sql, "BEGIN;", 6) == 0);
    const char *p = after(sql, "FROM unnest('{5}'::int[]) AS p;COPY \"rt_jobs_1\"");
    p = after(p, "FROM unnest('{2}'::int[]) AS p;COPY \"batch_rt_jobs_1\"");
    p = after(p, "COPY dead_letters");
    p = after(p, "'{2,5}'");
    p = after(p, "'{1,10}'");
    p = after(p, "'{12,13}'");
    assert_non_null(strstr(p, "check_cursors"));
    size_t n = strlen(sql);
    assert_string_equal(sql + n - 7, ";COMMIT");
    assert_int_equal(c.ncopies, 3);
    /* rt rows in job order: job 0 (n=1) before job 2 (n=3) */
    char rt[256];
    snprintf(rt, sizeof rt, "%.*s", (int)c.copies[0].len, c.copies[0].data);
    const char *first = strstr(rt, "{\"n\":1}"), *third = strstr(rt, "{\"n\":3}");
    assert_non_null(first);
    assert_non_null(third);
    assert_true(first < third);
    assert_non_null(strstr(c.copies[1].data, "{\"n\":2}"));
    assert_non_null(strstr(c.copies[2].data, "bad"));

    CommitTally t;
    commit_publish(&b, NULL, NULL, &t);
    assert_int_equal(t.rt, 2);
    assert_int_equal(t.batch_rt, 1);
    assert_int_equal(t.dead, 1);
    assert_int_equal(t.dead_by[DEAD_TRANSFORMER], 1);
    assert_int_equal(t.filtered, 1);

    /* the next batch reuses the buffers: nothing of this one is left */
    route_batch_reset(&b);
    b.njobs = 1;
    b.jobs = xcalloc(1, sizeof(Job));
    add_job(&b, 0, 20, 3, "u3");
    outputs_add_filtered(&b.outs, 0, 1, "d1");
    int p3[] = {3};
    int64_t o3[] = {0}, n3[] = {20};
    CommitMoves m3 = {p3, o3, n3, 1};
    commit_format(&c, &b, NULL, "rt_jobs_1", "batch_rt_jobs_1", &m3);
    assert_null(strstr(c.sql.data, "COPY"));
    assert_int_equal(c.ncopies, 0);
    assert_non_null(strstr(c.sql.data, "'{3}'"));
    commit_deinit(&c);
    route_batch_deinit(&b);
}

/* A user transformation's outputs: a batch destination's go to batch_rt
 * as returned (route_user_output), a fan-out keeps its order, its dead
 * letters carry stage user_transformation, and what it dropped is counted
 * as filtered by the user. */
static void test_user_transformation(void **state)
{
    Batch b;
    route_batch_init(&b);
    b.njobs = 2;
    b.jobs = xcalloc(2, sizeof(Job));
    add_job(&b, 0, 31, 4, "u1");
    add_job(&b, 1, 32, 4, "u1");
    WsDestination s3 = {.id = "d-s3", .name = "s3", .def_name = "S3", .batch = true};
    /* job 1's outputs arrive first; job 0 fans out into two, a then b */
    route_user_output(&b, NULL, 1, 1, &s3, "{\"n\":\"1\"}", 9);
    route_user_output(&b, NULL, 0, 1, &s3, "{\"n\":\"0a\"}", 10);
    route_user_output(&b, NULL, 0, 1, &s3, "{\"n\":\"0b\"}", 10);
    outputs_add_dead(&b.outs, 1, 2, "d-hook", 400, DEAD_USER_TRANSFORMATION,
                     "Timed out: user code", 20, b.jobs[1].text);
    outputs_add_user_filtered(&b.outs, 0, 2, "d-hook");
    outputs_add_filtered(&b.outs, 1, 3, "d-other");

    Commit c;
    commit_init(&c);
    int parts[] = {4};
    int64_t olds[] = {30}, news[] = {32};
    CommitMoves m = {parts, olds, news, 1};
    commit_format(&c, &b, NULL, "rt_jobs_1", "batch_rt_jobs_1", &m);
    assert_int_equal(c.ncopies, 2); /* batch_rt and dead letters, no rt */
    char rows[512];
    snprintf(rows, sizeof rows, "%.*s", (int)c.copies[0].len, c.copies[0].data);
    const char *a = strstr(rows, "0a"), *bb = strstr(rows, "0b"), *one = strstr(rows, "\"1\"");
    assert_non_null(a);
    assert_non_null(bb);
    assert_non_null(one);
    assert_true(a < bb && bb < one);
    char dead[512];
    snprintf(dead, sizeof dead, "%.*s", (int)c.copies[1].len, c.copies[1].data);
    assert_non_null(strstr(dead, "\tuser_transformation\t"));
    assert_null(strstr(dead, "\tprocessor\t"));
    assert_non_null(strstr(dead, "Timed out: user code"));

    CommitTally t;
    commit_publish(&b, NULL, NULL, &t);
    assert_int_equal(t.batch_rt, 3);
    assert_int_equal(t.rt, 0);
    assert_int_equal(t.dead_by[DEAD_USER_TRANSFORMATION], 1);
    assert_int_equal(t.filtered, 2);
    assert_int_equal(t.filtered_by_user, 1);
    commit_deinit(&c);
    route_batch_deinit(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_user_transformation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
