#include "common/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/hmap.h"
#include "common/xalloc.h"

static const double bounds[METRICS_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                0.1,    0.25,  0.5,    1,     2.5,  5,     10};

typedef struct Series {
    MetricSeries s;
    char *labels;
    struct Series *next;
} Series;

typedef struct Family {
    char *name;
    char *help;
    MetricType type;
    Series *first, *last;
} Family;

struct Metrics {
    Family **fams;
    int nfams;
    HMap by_name;   /* name -> Family */
    HMap by_series; /* name{labels} -> Series */
    void (*collect)(void *, Metrics *);
    void *collect_arg;
};

Metrics *metrics_create(void)
{
    Metrics *m = xcalloc(1, sizeof(*m));
    hmap_init(&m->by_name);
    hmap_init(&m->by_series);
    return m;
}

void metrics_destroy(Metrics *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->nfams; i++) {
        Family *f = m->fams[i];
        for (Series *s = f->first, *n; s; s = n) {
            n = s->next;
            free(s->labels);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    free(m->fams);
    hmap_deinit(&m->by_name);
    hmap_deinit(&m->by_series);
    free(m);
}

MetricSeries *metrics_series(Metrics *m, const char *name, const char *help, MetricType type,
                             const char *labels)
{
    char *key = xasprintf("%s{%s}", name, labels);
    Series *s = hmap_get(&m->by_series, key);
    if (s != NULL) {
        free(key);
        return &s->s;
    }
    Family *f = hmap_get(&m->by_name, name);
    if (f == NULL) {
        f = xcalloc(1, sizeof(*f));
        f->name = xstrdup(name);
        f->help = xstrdup(help);
        f->type = type;
        m->fams = xrealloc(m->fams, sizeof(Family *) * (size_t)(m->nfams + 1));
        m->fams[m->nfams++] = f;
        hmap_put(&m->by_name, name, f);
    }
    s = xcalloc(1, sizeof(*s));
    s->labels = xstrdup(labels);
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    hmap_put(&m->by_series, key, s);
    free(key);
    return &s->s;
}

void metrics_inc(MetricSeries *s, double by)
{
    s->value += by;
}

void metrics_set(MetricSeries *s, double v)
{
    s->value = v;
}

void metrics_observe(MetricSeries *s, double seconds)
{
    for (int i = 0; i < METRICS_NBUCKETS; i++)
        if (seconds <= bounds[i]) {
            s->buckets[i]++;
            break;
        }
    s->count++;
    s->sum += seconds;
}

void metrics_set_collect(Metrics *m, void (*cb)(void *, Metrics *), void *arg)
{
    m->collect = cb;
    m->collect_arg = arg;
}

static void put_num(Buf *out, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        buf_printf(out, "%.0f\n", v);
    else
        buf_printf(out, "%.9g\n", v);
}

void metrics_render(Metrics *m, Buf *out)
{
    if (m->collect)
        m->collect(m->collect_arg, m);
    static const char *const tnames[] = {"counter", "gauge", "histogram"};
    for (int i = 0; i < m->nfams; i++) {
        Family *f = m->fams[i];
        buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                   tnames[f->type]);
        for (Series *s = f->first; s; s = s->next) {
            const char *sep = s->labels[0] ? "," : "";
            if (f->type != METRIC_HISTOGRAM) {
                if (s->labels[0])
                    buf_printf(out, "%s{%s} ", f->name, s->labels);
                else
                    buf_printf(out, "%s ", f->name);
                put_num(out, s->s.value);
                continue;
            }
            unsigned long long cum = 0;
            for (int b = 0; b < METRICS_NBUCKETS; b++) {
                cum += s->s.buckets[b];
                buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                           bounds[b], cum);
            }
            buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep,
                       s->s.count);
            if (s->labels[0])
                buf_printf(out, "%s_sum{%s} ", f->name, s->labels);
            else
                buf_printf(out, "%s_sum ", f->name);
            put_num(out, s->s.sum);
            if (s->labels[0])
                buf_printf(out, "%s_count{%s} %llu\n", f->name, s->labels, s->s.count);
            else
                buf_printf(out, "%s_count %llu\n", f->name, s->s.count);
        }
    }
}
