/* The router's SQL (see store.h).
 *
 * rt_retries holds, per (destination, user) with rows, the head (smallest
 * job id, parked = false, next_retry_at set) and the jobs parked behind it
 * (parked = true). Every flush keeps that shape: it upserts rows as the
 * state machine describes them (order.c writes heads unparked and later
 * jobs parked), deletes the rows of finished jobs, then, for every user
 * that got a parked row or lost a row, makes its smallest remaining row the
 * head (unparked, due now unless it has a retry time). Index use (sql/002, sql/008):
 * (destination_id, user_id, job_id) for the claim's probe, the promotion and
 * the page loads; (partition, next_retry_at, job_id) WHERE NOT parked for the
 * due scan and the claim's emptiness test, per leased partition. */
#include "router/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/jobq.h"
#include "common/xalloc.h"

void store_put_int_array(Buf *b, const int *v, int n)
{
    buf_putc(b, '{');
    for (int i = 0; i < n; i++)
        buf_printf(b, i ? ",%d" : "%d", v[i]);
    buf_putc(b, '}');
}

void store_format_claim(Buf *sql, const int *parts, const int64_t *cursors, int n,
                        int per_partition)
{
    /* The CASE skips the per-job probes while no user has rows at all, the
     * usual case: the emptiness test is one probe of the due index. Rows of
     * the user before the job: it goes behind them. Its own row, or only
     * later rows: rt_retries holds a prefix of each user's pending jobs, so
     * a job without a row before a row of its user was resolved in an
     * earlier term (delivered before its cursor moved) - only the cursor
     * needs it. Both are one probe of rt_retries_user. */
    buf_puts(sql, "SELECT j.job_id, j.partition, j.workspace_id, j.source_id, j.destination_id,"
                  " j.user_id, j.payload, CASE WHEN r.any THEN EXISTS (SELECT 1 FROM rt_retries x"
                  " WHERE x.destination_id = j.destination_id AND x.user_id = j.user_id"
                  " AND x.job_id < j.job_id) ELSE false END,"
                  " CASE WHEN r.any THEN EXISTS (SELECT 1 FROM rt_retries y"
                  " WHERE y.destination_id = j.destination_id AND y.user_id = j.user_id"
                  " AND y.job_id >= j.job_id) ELSE false END"
                  " FROM (SELECT EXISTS (SELECT 1 FROM rt_retries WHERE NOT parked"
                  " AND partition = ANY ('");
    store_put_int_array(sql, parts, n);
    buf_puts(sql, "'::int[])) AS any) r, unnest('");
    store_put_int_array(sql, parts, n);
    buf_puts(sql, "'::int[], '");
    store_put_int64_array(sql, cursors, n);
    buf_printf(sql,
               "'::bigint[]) AS c(p, last) CROSS JOIN LATERAL (SELECT * FROM rt_jobs j"
               " WHERE j.partition = c.p AND j.job_id > c.last ORDER BY j.job_id LIMIT %d) j"
               " ORDER BY j.job_id",
               per_partition);
}

OrderJob *store_claimed_job(const PGresult *res, int i, OrderRows *rows)
{
    *rows = strcmp(PQgetvalue(res, i, 8), "t") == 0   ? ORDER_ROWS_OWN
            : strcmp(PQgetvalue(res, i, 7), "t") == 0 ? ORDER_ROWS_USER
                                                      : ORDER_ROWS_NONE;
    return order_job_create(strtoll(PQgetvalue(res, i, 0), NULL, 10), atoi(PQgetvalue(res, i, 1)),
                            PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
                            PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
                            (size_t)PQgetlength(res, i, 6));
}

#define RETRY_COLS(p)                                                                              \
    p "job_id, " p "partition, " p "workspace_id, " p "source_id, " p "destination_id, " p         \
      "user_id, " p "payload, " p "attempts,"                                                      \
      " coalesce((extract(epoch FROM " p "first_failed_at) * 1000)::bigint, 0),"                   \
      " coalesce((extract(epoch FROM " p "next_retry_at) * 1000)::bigint, 0),"                     \
      " coalesce(" p "last_status, 0)"

const char STORE_SQL_CURSORS[] =
    "SELECT c.partition, c.last_job_id FROM unnest($2::int[], $3::bigint[]) AS k(p, epoch)"
    " JOIN leases l ON l.stage = 'router' AND l.partition = k.p AND l.epoch = k.epoch"
    " AND l.owner = $1"
    " JOIN cursors c ON c.stage = 'router' AND c.partition = k.p";

/* Each partition's range is one index range (the partition is a constant
 * in the lateral subquery) cut at $6 rows; the outer ORDER BY is qualified
 * because the output column next_retry_at is text. */
const char STORE_SQL_DUE[] =
    "SELECT " RETRY_COLS("r.") ", r.next_retry_at::text FROM unnest($5::int[]) AS k(p)"
                               " CROSS JOIN LATERAL (SELECT * FROM rt_retries x"
                               " WHERE x.partition = k.p AND NOT x.parked"
                               " AND x.next_retry_at <= now()"
                               " AND (x.next_retry_at, x.job_id) > ($1::timestamptz, $2::bigint)"
                               " AND x.destination_id <> ALL ($3::text[])"
                               " ORDER BY x.next_retry_at, x.job_id LIMIT $6) r"
                               " ORDER BY r.next_retry_at, r.job_id LIMIT $4";

int store_due_per_partition(int limit, int nparts)
{
    int per = (2 * limit + nparts - 1) / nparts;
    if (per < STORE_DUE_MIN_PER_PARTITION)
        per = STORE_DUE_MIN_PER_PARTITION;
    return per < limit ? per : limit;
}

int store_due_take(const PGresult *res, int limit, int per_partition, bool *more)
{
    int n = PQntuples(res);
    /* rows come in (next_retry_at, job_id) order; the first partition to
     * read its whole share marks the cut: beyond that row it may hold rows
     * this page did not read. Without a cut, a short page means every
     * partition was read to its end. */
    int take = n, cap = 0, *count = NULL;
    *more = n >= limit;
    for (int i = 0; i < n; i++) {
        int p = atoi(PQgetvalue(res, i, 1));
        if (p < 0)
            continue;
        if (p >= cap) {
            int ncap = p + 64;
            count = xrealloc(count, sizeof(int) * (size_t)ncap);
            memset(count + cap, 0, sizeof(int) * (size_t)(ncap - cap));
            cap = ncap;
        }
        if (++count[p] >= per_partition) {
            take = i + 1;
            *more = true;
            break;
        }
    }
    free(count);
    return take;
}

const char STORE_SQL_LOAD[] = "SELECT " RETRY_COLS(
    "r.") ", k.i"
          " FROM unnest($1::text[], $2::text[], $3::bigint[], $5::int[])"
          " WITH ORDINALITY AS k(d, u, after, p, i)"
          " CROSS JOIN LATERAL (SELECT * FROM rt_retries x WHERE x.destination_id = k.d"
          " AND x.user_id = k.u AND x.job_id > k.after AND x.partition = k.p"
          " ORDER BY x.job_id LIMIT $4) r"
          " ORDER BY k.i, r.job_id";

OrderJob *store_retry_job(const PGresult *res, int i)
{
    OrderJob *j = order_job_create(
        strtoll(PQgetvalue(res, i, 0), NULL, 10), atoi(PQgetvalue(res, i, 1)),
        PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
        PQgetvalue(res, i, 6), (size_t)PQgetlength(res, i, 6));
    j->attempts = atoi(PQgetvalue(res, i, 7));
    j->first_failed_ms = strtoll(PQgetvalue(res, i, 8), NULL, 10);
    j->next_retry_ms = strtoll(PQgetvalue(res, i, 9), NULL, 10);
    j->last_status = atoi(PQgetvalue(res, i, 10));
    return j;
}

void store_put_text_array(Buf *b, const char *const *v, int n)
{
    buf_putc(b, '{');
    for (int i = 0; i < n; i++) {
        if (i)
            buf_putc(b, ',');
        buf_putc(b, '"');
        for (const char *p = v[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                buf_putc(b, '\\');
            buf_putc(b, *p);
        }
        buf_putc(b, '"');
    }
    buf_putc(b, '}');
}

void store_put_int64_array(Buf *b, const int64_t *v, int n)
{
    buf_putc(b, '{');
    for (int i = 0; i < n; i++)
        buf_printf(b, i ? ",%" PRId64 : "%" PRId64, v[i]);
    buf_putc(b, '}');
}

void store_flush_init(StoreFlush *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->sql);
    buf_init(&s->retry_rows);
    buf_init(&s->dead_rows);
    buf_init(&s->done_ids);
}

void store_flush_deinit(StoreFlush *s)
{
    buf_deinit(&s->sql);
    buf_deinit(&s->retry_rows);
    buf_deinit(&s->dead_rows);
    buf_deinit(&s->done_ids);
}

/* A timestamptz COPY field from epoch ms (0: NULL). */
static void put_time(Buf *b, int64_t ms)
{
    if (ms == 0) {
        buf_puts(b, "\\N");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[64];
    size_t n = strftime(s, sizeof s, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(s + n, sizeof s - n, ".%03d+00", (int)(ms % 1000));
    buf_puts(b, s);
}

static void put_retry_row(Buf *b, const OrderJob *j)
{
    buf_printf(b, "%" PRId64 "\t%d\t", j->job_id, j->partition);
    jobq_copy_text(b, j->workspace_id);
    buf_putc(b, '\t');
    jobq_copy_text(b, j->source_id);
    buf_putc(b, '\t');
    jobq_copy_text(b, j->dest_id);
    buf_putc(b, '\t');
    jobq_copy_text(b, j->user_id);
    buf_putc(b, '\t');
    jobq_copy_text(b, j->payload);
    buf_printf(b, "\t%s\t%d\t", j->parked ? "t" : "f", j->attempts);
    put_time(b, j->first_failed_ms);
    buf_putc(b, '\t');
    put_time(b, j->parked ? 0 : j->next_retry_ms);
    buf_putc(b, '\t');
    if (j->last_status || j->last_error)
        buf_printf(b, "%d", j->last_status);
    else
        buf_puts(b, "\\N");
    buf_putc(b, '\t');
    jobq_copy_text(b, j->last_error);
    buf_putc(b, '\n');
}

void store_format_flush(StoreFlush *s, const OrderFlush *f, const char *fence)
{
    buf_reset(&s->retry_rows);
    buf_reset(&s->dead_rows);
    buf_reset(&s->done_ids);
    int ndone = 0;
    for (int i = 0; i < f->njobs; i++) {
        const OrderJob *j = f->jobs[i];
        if (j->fate == ORDER_PENDING) {
            if (j->row)
                put_retry_row(&s->retry_rows, j);
            continue;
        }
        if (j->row)
            buf_printf(&s->done_ids, ndone++ ? ",%" PRId64 : "%" PRId64, j->job_id);
        if (j->fate == ORDER_DEAD) {
            DeadLetter dl = {"rt",         j->job_id,  "router",   j->partition,   j->workspace_id,
                             j->source_id, j->dest_id, j->user_id, j->last_status, j->last_error,
                             j->response,  j->payload, j->attempts};
            jobq_copy_dead_letter(&s->dead_rows, &dl);
        }
    }
    Buf *q = &s->sql;
    buf_reset(q);
    /* Asynchronous commit: if Postgres itself crashes, the last flushes may
     * be lost as a whole (they are atomic), and those jobs are delivered
     * again - the at-least-once delivery the router promises anyway. It
     * saves a WAL flush per status batch. */
    buf_puts(q, "BEGIN; SET LOCAL synchronous_commit = off;");
    buf_puts(q, fence);
    s->ncopies = 0;
    if (s->retry_rows.len > 0 || ndone > 0)
        buf_puts(q, "CREATE TEMP TABLE IF NOT EXISTS rt_retries_touched (destination_id text,"
                    " user_id text) ON COMMIT DELETE ROWS;");
    if (s->retry_rows.len > 0) {
        buf_puts(q,
                 "CREATE TEMP TABLE IF NOT EXISTS rt_retries_in (LIKE rt_retries)"
                 " ON COMMIT DELETE ROWS;"
                 "COPY rt_retries_in (job_id, partition, workspace_id, source_id, destination_id,"
                 " user_id, payload, parked, attempts, first_failed_at, next_retry_at,"
                 " last_status, last_error) FROM STDIN;"
                 "INSERT INTO rt_retries SELECT * FROM rt_retries_in ON CONFLICT (job_id)"
                 " DO UPDATE SET parked = EXCLUDED.parked, attempts = EXCLUDED.attempts,"
                 " first_failed_at = EXCLUDED.first_failed_at,"
                 " next_retry_at = EXCLUDED.next_retry_at, last_status = EXCLUDED.last_status,"
                 " last_error = EXCLUDED.last_error;"
                 "INSERT INTO rt_retries_touched SELECT destination_id, user_id FROM rt_retries_in"
                 " WHERE parked;");
        s->copies[s->ncopies++] = (DbCopy){s->retry_rows.data, s->retry_rows.len};
    }
    if (ndone > 0)
        buf_printf(q,
                   "WITH del AS (DELETE FROM rt_retries WHERE job_id = ANY('{%s}'::bigint[])"
                   " RETURNING destination_id, user_id)"
                   " INSERT INTO rt_retries_touched SELECT * FROM del;",
                   s->done_ids.data);
    if (s->retry_rows.len > 0 || ndone > 0)
        /* Each user whose rows changed gets its smallest row as head, due
         * now unless it has a retry time: the state machine may park a job
         * while rt_retries holds no row before it (it only knows the table
         * MAY hold some), and deletes leave the next row first. One index
         * probe per user. */
        buf_puts(q, "UPDATE rt_retries r SET parked = false,"
                    " next_retry_at = coalesce(r.next_retry_at, now())"
                    " FROM (SELECT DISTINCT destination_id, user_id FROM rt_retries_touched) k"
                    " CROSS JOIN LATERAL (SELECT x.job_id FROM rt_retries x"
                    " WHERE x.destination_id = k.destination_id AND x.user_id = k.user_id"
                    " ORDER BY x.job_id LIMIT 1) m"
                    " WHERE r.job_id = m.job_id AND r.parked;");
    if (s->dead_rows.len > 0) {
        buf_puts(q, JOBQ_SQL_COPY_DEAD_LETTERS);
        s->copies[s->ncopies++] = (DbCopy){s->dead_rows.data, s->dead_rows.len};
    }
    if (f->nparts > 0) {
        jobq_format_advance(q, "router", f->parts, f->old_ids, f->new_ids, f->nparts);
        buf_putc(q, ';');
    }
    buf_puts(q, "COMMIT");
}
