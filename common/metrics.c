#include "common/metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
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
    metrics_render_with(m, "", out);
}

void metrics_format_label(char *out, size_t size, const char *name, const char *value)
{
    size_t n = (size_t)snprintf(out, size, "%s=\"", name);
    if (n >= size) {
        out[0] = '\0';
        return;
    }
    for (const char *v = value; *v && n + 4 < size; v++) {
        if (*v == '\\' || *v == '"') {
            out[n++] = '\\';
            out[n++] = *v;
        } else if (*v == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *v;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
}

/* The label set of one series: its own labels, then the extra ones. */
static void put_labels(Buf *out, const char *name, const char *suffix, const char *labels,
                       const char *extra, const char *le)
{
    buf_printf(out, "%s%s", name, suffix);
    bool any = labels[0] || extra[0] || le;
    if (!any) {
        buf_puts(out, " ");
        return;
    }
    const char *sep = "";
    buf_puts(out, "{");
    if (labels[0]) {
        buf_puts(out, labels);
        sep = ",";
    }
    if (extra[0]) {
        buf_printf(out, "%s%s", sep, extra);
        sep = ",";
    }
    if (le)
        buf_printf(out, "%sle=\"%s\"", sep, le);
    buf_puts(out, "} ");
}

void metrics_render_with(Metrics *m, const char *extra, Buf *out)
{
    if (m->collect)
        m->collect(m->collect_arg, m);
    static const char *const tnames[] = {"counter", "gauge", "histogram"};
    for (int i = 0; i < m->nfams; i++) {
        Family *f = m->fams[i];
        buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                   tnames[f->type]);
        for (Series *s = f->first; s; s = s->next) {
            if (f->type != METRIC_HISTOGRAM) {
                put_labels(out, f->name, "", s->labels, extra, NULL);
                put_num(out, s->s.value);
                continue;
            }
            unsigned long long cum = 0;
            for (int b = 0; b < METRICS_NBUCKETS; b++) {
                char le[32];
                snprintf(le, sizeof le, "%g", bounds[b]);
                cum += s->s.buckets[b];
                put_labels(out, f->name, "_bucket", s->labels, extra, le);
                buf_printf(out, "%llu\n", cum);
            }
            put_labels(out, f->name, "_bucket", s->labels, extra, "+Inf");
            buf_printf(out, "%llu\n", s->s.count);
            put_labels(out, f->name, "_sum", s->labels, extra, NULL);
            put_num(out, s->s.sum);
            put_labels(out, f->name, "_count", s->labels, extra, NULL);
            buf_printf(out, "%llu\n", s->s.count);
        }
    }
}

/* Snapshot records: per family "F" name\0 help\0 type(1 byte), then per
 * series "S" labels\0 and the raw MetricSeries. Native byte order: the
 * reader is a sibling process of the same binary. */
void metrics_snapshot(Metrics *m, Buf *out)
{
    if (m->collect)
        m->collect(m->collect_arg, m);
    for (int i = 0; i < m->nfams; i++) {
        Family *f = m->fams[i];
        buf_putc(out, 'F');
        buf_append(out, f->name, strlen(f->name) + 1);
        buf_append(out, f->help, strlen(f->help) + 1);
        buf_putc(out, (char)f->type);
        for (Series *s = f->first; s; s = s->next) {
            buf_putc(out, 'S');
            buf_append(out, s->labels, strlen(s->labels) + 1);
            buf_append(out, &s->s, sizeof s->s);
        }
    }
}

/* The NUL-terminated string at *p (within end), or NULL. */
static const char *take_str(const char **p, const char *end)
{
    const char *z = memchr(*p, '\0', (size_t)(end - *p));
    if (z == NULL)
        return NULL;
    const char *s = *p;
    *p = z + 1;
    return s;
}

int metrics_merge(Metrics *m, const char *data, size_t len, const char *extra)
{
    const char *p = data, *end = data + len;
    const char *name = NULL, *help = NULL;
    MetricType type = METRIC_GAUGE;
    Buf labels;
    buf_init(&labels);
    int rc = 0;
    while (p < end) {
        char tag = *p++;
        if (tag == 'F') {
            name = take_str(&p, end);
            help = name ? take_str(&p, end) : NULL;
            if (help == NULL || p >= end || (unsigned char)*p > METRIC_HISTOGRAM) {
                rc = -1;
                break;
            }
            type = (MetricType)*p++;
            continue;
        }
        const char *own = tag == 'S' && name ? take_str(&p, end) : NULL;
        MetricSeries v;
        if (own == NULL || (size_t)(end - p) < sizeof v) {
            rc = -1;
            break;
        }
        memcpy(&v, p, sizeof v);
        p += sizeof v;
        buf_reset(&labels);
        buf_printf(&labels, "%s%s%s", own, own[0] && extra[0] ? "," : "", extra);
        MetricSeries *s = metrics_series(m, name, help, type, labels.data ? labels.data : "");
        s->value += v.value;
        for (int b = 0; b < METRICS_NBUCKETS; b++)
            s->buckets[b] += v.buckets[b];
        s->count += v.count;
        s->sum += v.sum;
    }
    buf_deinit(&labels);
    return rc;
}
