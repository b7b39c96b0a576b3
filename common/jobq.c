#include "common/jobq.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const char JOBQ_SQL_NEWEST_DATASET[] =
    "SELECT table_name FROM datasets WHERE queue = $1 ORDER BY idx DESC LIMIT 1";

const char JOBQ_SQL_COPY_DEAD_LETTERS[] =
    "COPY dead_letters (queue, job_id, stage, partition, workspace_id, source_id,"
    " destination_id, user_id, status_code, reason, response, payload, attempts) FROM STDIN;";

const char *jobq_name(JobQueueId q)
{
    switch (q) {
    case JOBQ_GW: return "gw";
    case JOBQ_RT: return "rt";
    case JOBQ_BATCH_RT: return "batch_rt";
    }
    return "?";
}

int jobq_partition(const char *workspace_id, const char *user_key, int partitions)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)workspace_id; *p; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ 0u) * 16777619u;
    for (const unsigned char *p = (const unsigned char *)user_key; *p; p++)
        h = (h ^ *p) * 16777619u;
    return (int)(h % (uint32_t)partitions);
}

void jobq_copy_text(Buf *b, const char *s)
{
    if (s == NULL)
        buf_puts(b, "\\N");
    else
        buf_put_copy_text(b, s, strlen(s));
}

/* workspace, source, destination, user: the identity columns every row has */
static void copy_ids(Buf *b, const char *ws, const char *src, const char *dest, const char *user)
{
    jobq_copy_text(b, ws);
    buf_putc(b, '\t');
    jobq_copy_text(b, src);
    buf_putc(b, '\t');
    jobq_copy_text(b, dest ? dest : "");
    buf_putc(b, '\t');
    jobq_copy_text(b, user);
    buf_putc(b, '\t');
}

void jobq_copy_row(Buf *b, const JobRow *r)
{
    buf_printf(b, "%d\t", r->partition);
    copy_ids(b, r->workspace_id, r->source_id, r->destination_id, r->user_id);
    buf_put_copy_text(b, r->payload, r->payload_len);
    buf_putc(b, '\n');
}

void jobq_copy_dead_letter(Buf *b, const DeadLetter *d)
{
    jobq_copy_text(b, d->queue);
    buf_printf(b, "\t%" PRId64 "\t", d->job_id);
    jobq_copy_text(b, d->stage);
    buf_printf(b, "\t%d\t", d->partition);
    copy_ids(b, d->workspace_id, d->source_id, d->destination_id, d->user_id);
    buf_printf(b, "%d\t", d->status_code);
    jobq_copy_text(b, d->reason ? d->reason : "aborted");
    buf_putc(b, '\t');
    jobq_copy_text(b, d->response);
    buf_putc(b, '\t');
    jobq_copy_text(b, d->payload);
    buf_printf(b, "\t%d\n", d->attempts);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int jobq_sort_partitions(int *parts, int n)
{
    if (n <= 1)
        return n;
    qsort(parts, (size_t)n, sizeof(int), cmp_int);
    int m = 1;
    for (int i = 1; i < n; i++)
        if (parts[i] != parts[m - 1])
            parts[m++] = parts[i];
    return m;
}

void jobq_format_int_array(Buf *sql, const int *v, int n)
{
    buf_putc(sql, '\'');
    buf_putc(sql, '{');
    for (int i = 0; i < n; i++)
        buf_printf(sql, i ? ",%d" : "%d", v[i]);
    buf_puts(sql, "}'");
}

static void format_i64_array(Buf *sql, const int64_t *v, int n)
{
    buf_puts(sql, "'{");
    for (int i = 0; i < n; i++)
        buf_printf(sql, i ? ",%" PRId64 : "%" PRId64, v[i]);
    buf_puts(sql, "}'");
}

void jobq_format_write(Buf *sql, JobQueueId q, const char *table, const int *parts, int nparts,
                       bool begin, bool report_xact)
{
    if (begin)
        buf_puts(sql, "BEGIN;");
    /* unnest() returns the array in order, so locks are taken ascending. */
    buf_printf(sql, "SELECT count(pg_advisory_xact_lock(%d, p))%s FROM unnest(", (int)q,
               report_xact ? ", pg_current_xact_id()::text, pg_backend_pid()" : "");
    jobq_format_int_array(sql, parts, nparts);
    buf_puts(sql, "::int[]) AS p;");
    buf_printf(sql,
               "COPY \"%s\" (partition, workspace_id, source_id, destination_id, user_id, payload)"
               " FROM STDIN;",
               table);
}

void jobq_format_claim(Buf *sql, JobQueueId q, const int *parts, const int64_t *cursors, int n,
                       const int *limits, int per_partition)
{
    buf_puts(sql, "SELECT j.job_id, j.partition, j.workspace_id, j.source_id, j.destination_id,"
                  " j.user_id, (extract(epoch FROM j.created_at) * 1000)::bigint, j.payload"
                  " FROM unnest(");
    jobq_format_int_array(sql, parts, n);
    buf_puts(sql, "::int[], ");
    format_i64_array(sql, cursors, n);
    buf_puts(sql, "::bigint[], ");
    buf_puts(sql, "'{");
    for (int i = 0; i < n; i++)
        buf_printf(sql, i ? ",%d" : "%d", limits ? limits[i] : per_partition);
    buf_printf(sql,
               "}'::int[]) AS c(p, last, lim) CROSS JOIN LATERAL (SELECT * FROM %s_jobs j"
               " WHERE j.partition = c.p AND j.job_id > c.last ORDER BY j.job_id LIMIT c.lim) j"
               " ORDER BY j.job_id",
               jobq_name(q));
}

void jobq_format_advance(Buf *sql, const char *stage, const int *parts, const int64_t *old_ids,
                         const int64_t *new_ids, int n)
{
    buf_puts(sql, "WITH moved AS (UPDATE cursors c SET last_job_id = v.new_id FROM unnest(");
    jobq_format_int_array(sql, parts, n);
    buf_puts(sql, "::int[], ");
    format_i64_array(sql, old_ids, n);
    buf_puts(sql, "::bigint[], ");
    format_i64_array(sql, new_ids, n);
    buf_printf(sql,
               "::bigint[]) AS v(p, old_id, new_id) WHERE c.stage = '%s' AND c.partition = v.p"
               " AND c.last_job_id = v.old_id RETURNING 1)"
               " SELECT check_cursors((SELECT count(*) FROM moved)::int, %d)",
               stage, n);
}
