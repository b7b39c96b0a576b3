/* Tests common/metrics.c: the text format, checked by hand and by
 * `promtool check metrics` (Debian's prometheus package). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "common/metrics.h"

static Metrics *sample(void)
{
    Metrics *m = metrics_create();
    MetricSeries *a = metrics_series(m, "pintle_test_events_total", "Events seen", METRIC_COUNTER,
                                     "source_id=\"s1\"");
    MetricSeries *b = metrics_series(m, "pintle_test_events_total", "Events seen", METRIC_COUNTER,
                                     "source_id=\"s2\"");
    metrics_inc(a, 3);
    metrics_inc(b, 1);
    assert_ptr_equal(metrics_series(m, "pintle_test_events_total", "Events seen", METRIC_COUNTER,
                                    "source_id=\"s1\""),
                     a);
    metrics_set(metrics_series(m, "pintle_test_backlog", "Backlog", METRIC_GAUGE, ""), 2.5);
    MetricSeries *h = metrics_series(m, "pintle_test_latency_seconds", "Latency", METRIC_HISTOGRAM,
                                     "stage=\"x\"");
    metrics_observe(h, 0.0004);
    metrics_observe(h, 0.003);
    metrics_observe(h, 100);
    return m;
}

static void test_render(void **state)
{
    Metrics *m = sample();
    Buf b;
    buf_init(&b);
    metrics_render(m, &b);
    assert_non_null(strstr(b.data, "# TYPE pintle_test_events_total counter\n"));
    assert_non_null(strstr(b.data, "pintle_test_events_total{source_id=\"s1\"} 3\n"));
    assert_non_null(strstr(b.data, "pintle_test_events_total{source_id=\"s2\"} 1\n"));
    assert_non_null(strstr(b.data, "pintle_test_backlog 2.5\n"));
    assert_non_null(
        strstr(b.data, "pintle_test_latency_seconds_bucket{stage=\"x\",le=\"0.0005\"} 1\n"));
    assert_non_null(
        strstr(b.data, "pintle_test_latency_seconds_bucket{stage=\"x\",le=\"0.005\"} 2\n"));
    assert_non_null(
        strstr(b.data, "pintle_test_latency_seconds_bucket{stage=\"x\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(b.data, "pintle_test_latency_seconds_count{stage=\"x\"} 3\n"));
    buf_deinit(&b);
    metrics_destroy(m);
}

static void test_promtool(void **state)
{
    Metrics *m = sample();
    Buf b;
    buf_init(&b);
    metrics_render(m, &b);
    FILE *p = popen("promtool check metrics", "w");
    assert_non_null(p);
    fwrite(b.data, 1, b.len, p);
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    buf_deinit(&b);
    metrics_destroy(m);
}

/* Two workers' snapshots merged into one scrape: every series once per
 * worker, labelled, families grouped (one TYPE line each), values intact;
 * a cut snapshot is refused. */
static void test_merge(void **state)
{
    Metrics *w0 = sample();
    Metrics *w1 = sample();
    metrics_inc(metrics_series(w1, "pintle_test_events_total", "Events seen", METRIC_COUNTER,
                               "source_id=\"s1\""),
                10);
    Buf s0, s1;
    buf_init(&s0);
    buf_init(&s1);
    metrics_snapshot(w0, &s0);
    metrics_snapshot(w1, &s1);
    Metrics *all = metrics_create();
    assert_int_equal(metrics_merge(all, s0.data, s0.len, "worker=\"0\""), 0);
    assert_int_equal(metrics_merge(all, s1.data, s1.len, "worker=\"1\""), 0);
    Buf b;
    buf_init(&b);
    metrics_render(all, &b);
    assert_non_null(strstr(b.data, "pintle_test_events_total{source_id=\"s1\",worker=\"0\"} 3\n"));
    assert_non_null(strstr(b.data, "pintle_test_events_total{source_id=\"s1\",worker=\"1\"} 13\n"));
    assert_non_null(strstr(b.data, "pintle_test_backlog{worker=\"1\"} 2.5\n"));
    assert_non_null(strstr(
        b.data, "pintle_test_latency_seconds_bucket{stage=\"x\",worker=\"1\",le=\"0.005\"} 2\n"));
    assert_non_null(
        strstr(b.data, "pintle_test_latency_seconds_sum{stage=\"x\",worker=\"0\"} 100.0034\n"));
    const char *first = strstr(b.data, "# TYPE pintle_test_events_total counter\n");
    assert_non_null(first);
    assert_null(strstr(first + 1, "# TYPE pintle_test_events_total"));
    FILE *p = popen("promtool check metrics", "w");
    assert_non_null(p);
    fwrite(b.data, 1, b.len, p);
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    Metrics *cut = metrics_create();
    assert_int_equal(metrics_merge(cut, s0.data, s0.len - 3, ""), -1);
    metrics_destroy(cut);
    buf_deinit(&b);
    buf_deinit(&s0);
    buf_deinit(&s1);
    metrics_destroy(all);
    metrics_destroy(w0);
    metrics_destroy(w1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_promtool),
        cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
