/* The router's SQL: claims of rt jobs, the status flush (rt_retries rows,
 * dead letters, cursors), and the two ways rows come back from rt_retries
 * (due heads, pages of a user's parked rows). Formats statements and COPY
 * data, and turns result rows into jobs; owns only its buffers, never a
 * connection. The engine sends what it formats on its one connection. */
#ifndef ROUTER_STORE_H
#define ROUTER_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/buf.h"
#include "common/db.h"
#include "router/order.h"

/* One statement for the engine's connection: its text, parameters (text
 * format; nparams -1: a multi-statement text without parameters) and COPY
 * data. Everything is borrowed from the module that formatted it and stays
 * valid until that module has handled the result. */
#define STORE_MAX_PARAMS 8
typedef struct StoreStmt {
    const char *step; /* what it is, for logs: "claim", "flush", ... */
    const char *sql;
    int nparams;
    const char *params[STORE_MAX_PARAMS];
    const DbCopy *copies;
    int ncopies;
} StoreStmt;

/* Appends the claim: up to per_partition rt jobs beyond the cursor of each
 * of the n partitions parts[i] (cursors[i]), in job order, each with
 * whether rt_retries holds a row of its (destination, user) or of the job
 * itself. Two index probes per job, and only while rt_retries holds a row
 * of those partitions. */
void store_format_claim(Buf *sql, const int *parts, const int64_t *cursors, int n,
                        int per_partition);

/* The cursors of partitions the router leases: $1 the lease owner, $2
 * partitions (int[]), $3 their epochs (bigint[]); rows (partition,
 * last_job_id) only for partitions whose lease row shows that owner and
 * epoch. */
extern const char STORE_SQL_CURSORS[];
/* Row i of a claim result as a job (caller owns it); *rows as claimed. */
OrderJob *store_claimed_job(const PGresult *res, int i, OrderRows *rows);

/* Due heads: parameterised statement with $1 (timestamptz text) and $2
 * (job id) the scan position (rows after it, '-infinity' and 0 at first),
 * $3 destinations to leave out (text[]), $4 the page size, $5 the
 * partitions to read (int[]), $6 the most rows read per partition. Ordered
 * by (next_retry_at, job_id); column STORE_DUE_AT_COL is next_retry_at as
 * text. One index range per partition (sql/008), so it reads at most $5
 * times $6 rows; use store_due_take for the rows that form the page. */
extern const char STORE_SQL_DUE[];
#define STORE_DUE_MIN_PER_PARTITION 16
/* $6 for a page of limit rows over nparts partitions: twice a fair share,
 * at least STORE_DUE_MIN_PER_PARTITION, at most limit. */
int store_due_per_partition(int limit, int nparts);
/* The rows of a due scan result that form the page: the leading rows up to
 * and including the first one with which a partition read its whole share
 * (after it, that partition may hold rows not read). *more: the scan goes on
 * at once from the last row taken (else the table was read to the end). */
int store_due_take(const PGresult *res, int limit, int per_partition, bool *more);
#define STORE_DUE_AT_COL 11

/* Pages of parked rows: $1 destinations (text[]), $2 users (text[]), $3 job
 * ids (bigint[]), $5 partitions (int[]): for each (destination, user,
 * after, partition) up to $4 rows of that partition with job_id > after, in
 * job order; column STORE_LOAD_INDEX_COL is the 1-based index of the
 * (destination, user) the row belongs to, rows grouped by it. */
extern const char STORE_SQL_LOAD[];
#define STORE_LOAD_INDEX_COL 11

/* Row i of a due or load result as a job with its stored attempts and
 * times (caller owns it). */
OrderJob *store_retry_job(const PGresult *res, int i);

/* Appends a Postgres array literal of the strings (for a text[] parameter). */
void store_put_text_array(Buf *b, const char *const *v, int n);
/* Appends a Postgres array literal of the numbers. */
void store_put_int64_array(Buf *b, const int64_t *v, int n);
void store_put_int_array(Buf *b, const int *v, int n);

/* The buffers of one flush transaction. */
typedef struct StoreFlush {
    Buf sql;
    Buf retry_rows; /* COPY rows of rt_retries upserts */
    Buf dead_rows;  /* COPY rows of dead_letters */
    Buf done_ids;
    DbCopy copies[2];
    int ncopies;
} StoreFlush;

void store_flush_init(StoreFlush *s);
void store_flush_deinit(StoreFlush *s);
/* Formats f as one transaction (asynchronous commit): first the fence
 * (statements that fail the transaction unless the leases of f's
 * partitions are still held, from lease_format_fence; "" for none), then
 * upsert the rows of jobs still pending, delete the rows of finished jobs
 * and promote each such user's next row to head, insert dead letters,
 * advance the cursors compare-and-set. s->sql and s->copies are what to
 * send. */
void store_format_flush(StoreFlush *s, const OrderFlush *f, const char *fence);

#endif
