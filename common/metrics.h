/* A Prometheus metrics registry rendered in the text exposition format.
 * Owns every family and series; callers keep the returned series pointers
 * (valid until metrics_destroy) and update them on the hot path without
 * lookups. Labels are preformatted (`source_id="s1"`), never per user. */
#ifndef COMMON_METRICS_H
#define COMMON_METRICS_H

#include "common/buf.h"

typedef enum MetricType { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } MetricType;

typedef struct Metrics Metrics;

/* Help texts of the families several executables export: one text per
 * family across the processes of a pipeline. pintle_stage_in_total is
 * counted by the stage that writes the queue (the gateway for the
 * processor, the processor for router and batchrouter), out by the stage
 * that consumes it, so rate(in) - rate(out) is how fast the stage's queue
 * grows. */
#define METRICS_STAGE_IN_HELP                                                                      \
    "Jobs written into the stage's input queue (counted by the stage that writes them)"
#define METRICS_STAGE_OUT_HELP                                                                     \
    "Jobs that left the stage's input queue: handed on, delivered, aborted or dead-lettered"
#define METRICS_ABORTS_HELP  "Jobs given up into dead letters (aborted or rejected)"
#define METRICS_RETRIES_HELP "Failed attempts that will be retried"

#define METRICS_NBUCKETS 14

typedef struct MetricSeries {
    double value;                           /* counter or gauge */
    unsigned long long buckets[METRICS_NBUCKETS]; /* histogram: cumulative at render */
    unsigned long long count;
    double sum;
} MetricSeries;

Metrics *metrics_create(void);
void metrics_destroy(Metrics *m);
/* Finds or creates the series of family name with the given labels ("" for
 * none). The first call for a family fixes its help and type. Borrowed. */
MetricSeries *metrics_series(Metrics *m, const char *name, const char *help, MetricType type,
                             const char *labels);
void metrics_inc(MetricSeries *s, double by);
void metrics_set(MetricSeries *s, double v);
/* Records one observation in seconds. */
void metrics_observe(MetricSeries *s, double seconds);
/* Called before each render, to refresh gauges. */
void metrics_set_collect(Metrics *m, void (*cb)(void *arg, Metrics *m), void *arg);
void metrics_render(Metrics *m, Buf *out);
/* The same with extra preformatted labels on every series ("" for none),
 * e.g. `worker="2"` for one of several processes serving one target. */
void metrics_render_with(Metrics *m, const char *extra_labels, Buf *out);
/* Appends a binary snapshot of every series (after the collect callback)
 * to out: what another process of the same target merges into its
 * scrape. Only metrics_merge reads it (same build, same host). */
void metrics_snapshot(Metrics *m, Buf *out);
/* Adds the series of snapshot data[0..len) to m, each with the extra
 * preformatted labels (e.g. `worker="2"`) after its own: counters and
 * gauges are added, histograms bucket by bucket. Returns 0, or -1 (m
 * unchanged from the first bad record on) when the snapshot is cut or
 * malformed. */
int metrics_merge(Metrics *m, const char *data, size_t len, const char *extra_labels);
/* Writes name="value" into out (size bytes), the value escaped as the text
 * format wants (backslash, double quote, newline); cut to fit. */
void metrics_format_label(char *out, size_t size, const char *name, const char *value);

#endif
