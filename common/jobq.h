/* The jobs queue (DESIGN §3): SQL and encoding shared by the stages.
 * Owns nothing at run time: it formats the statements and COPY rows that a
 * stage sends over its own db connections. Queues are gw, rt and batch_rt;
 * each is a parent table whose datasets (child tables) rotate and are dropped
 * by maintain_queue() (sql/001_jobs.sql).
 *
 * Writers: lock the partitions they append to (ascending, transaction-level
 * advisory locks) and COPY into the newest dataset, all in one transaction.
 * Readers: keep a cursor per (stage, partition) and advance it, compare-and-
 * set, in the same transaction that writes their outputs. */
#ifndef COMMON_JOBQ_H
#define COMMON_JOBQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef enum JobQueueId { JOBQ_GW = 1, JOBQ_RT = 2, JOBQ_BATCH_RT = 3 } JobQueueId;

const char *jobq_name(JobQueueId q);

/* partition = FNV-1a(workspace_id NUL user_key) mod partitions. */
int jobq_partition(const char *workspace_id, const char *user_key, int partitions);

typedef struct JobRow {
    int partition;
    const char *workspace_id;
    const char *source_id;
    const char *destination_id; /* "" for gw */
    const char *user_id;
    const char *payload;
    size_t payload_len;
} JobRow;

/* Appends one COPY text-format line for r (columns as in jobq_format_write). */
void jobq_copy_row(Buf *copy, const JobRow *r);

/* Appends one COPY text field: s escaped, or \N for NULL. */
void jobq_copy_text(Buf *copy, const char *s);

/* A row of dead_letters; the stage that gave up on a job writes it. */
typedef struct DeadLetter {
    const char *queue; /* queue the job came from: "gw" or "rt" */
    int64_t job_id;
    const char *stage; /* "processor", "user_transformation" or "router" */
    int partition;
    const char *workspace_id, *source_id, *destination_id, *user_id;
    int status_code;
    const char *reason;
    const char *response; /* may be NULL */
    const char *payload;
    int attempts;
} DeadLetter;

/* The COPY statement whose rows jobq_copy_dead_letter encodes. */
extern const char JOBQ_SQL_COPY_DEAD_LETTERS[];
void jobq_copy_dead_letter(Buf *copy, const DeadLetter *d);

/* Sorts and de-duplicates parts in place; returns the new count. */
int jobq_sort_partitions(int *parts, int n);

/* Appends to sql the statements that lock the (sorted, unique) partitions of
 * queue q and start COPY into table. Preceded by BEGIN when begin is true.
 * With report_xact the lock statement also returns the transaction id and
 * backend pid (columns 2 and 3), so a writer that loses its connection
 * during COMMIT can ask another connection what became of it. */
void jobq_format_write(Buf *sql, JobQueueId q, const char *table, const int *parts, int nparts,
                       bool begin, bool report_xact);

/* SQL returning the newest dataset table of queue $1. */
extern const char JOBQ_SQL_NEWEST_DATASET[];

/* Appends a claim statement: rows of queue q with job_id beyond the cursor of
 * each listed partition, at most limits[i] (or per_partition when limits is
 * NULL) rows each, ordered by job_id. Each partition's rows are a prefix of
 * its unread rows, which is all a cursor consumer needs.
 * Result columns: job_id, partition, workspace_id, source_id,
 * destination_id, user_id, created_at (epoch ms), payload. */
void jobq_format_claim(Buf *sql, JobQueueId q, const int *parts, const int64_t *cursors, int n,
                       const int *limits, int per_partition);

/* Appends a statement that advances stage's cursors from old[i] to new[i]
 * for each listed partition, compare-and-set, and raises an error (aborting
 * the transaction) if any cursor was moved by another consumer first. */
void jobq_format_advance(Buf *sql, const char *stage, const int *parts, const int64_t *old_ids,
                         const int64_t *new_ids, int n);

/* Appends an int array literal '{1,2,3}'. */
void jobq_format_int_array(Buf *sql, const int *v, int n);

#endif
