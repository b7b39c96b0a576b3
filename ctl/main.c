/* pintlectl: the operator command line.
 *   migrate          apply pending schema migrations (the explicit migrate step)
 *   status           queues, instances and their leased partitions (lag per
 *                    partition), unowned partitions, datasets, dead letters
 *   dead-letters     list dead-lettered jobs
 *   replay           re-queue dead letters: the router's as new rt jobs, the
 *                    processor's as gw jobs for their one destination
 *   config-doc       print a documented pintle.conf with every default
 *   check-config     validate the configuration and print it
 * Blocking libpq is fine here: this is a short-lived command, not a loop. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/log.h"
#include "common/migrate.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: pintlectl [-c pintle.conf] COMMAND\n"
               "commands:\n"
               "  migrate        apply pending schema migrations\n"
               "  status         queues (pending, lag), instances and the partitions they\n"
               "                 lease, unowned partitions, datasets, dead letters\n"
               "  dead-letters   list dead-lettered jobs (newest 100)\n"
               "  replay [--destination ID] [--id N]\n"
               "                 re-queue dead letters (all, one destination's, or one): the\n"
               "                 router's as new rt jobs, the processor's as gw jobs that are\n"
               "                 processed again for their one destination only\n"
               "  config-doc     print a documented pintle.conf with every default\n"
               "  check-config   validate the configuration and print it\n");
}

static int print_query(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "pintlectl: query failed: %s", PQresultErrorMessage(r));
        PQclear(r);
        return 1;
    }
    int nf = PQnfields(r);
    for (int j = 0; j < nf; j++)
        printf("%s%s", j ? "\t" : "", PQfname(r, j));
    printf("\n");
    for (int i = 0; i < PQntuples(r); i++) {
        for (int j = 0; j < nf; j++)
            printf("%s%s", j ? "\t" : "", PQgetvalue(r, i, j));
        printf("\n");
    }
    PQclear(r);
    return 0;
}

/* Pending jobs and the age of the oldest one beyond cursor c (one partition
 * of one stage), by the queue the stage reads. */
#define PENDING_OF(c)                                                                              \
    "(SELECT count(*) AS pending, min(created_at) AS oldest FROM ("                                \
    " SELECT created_at FROM gw_jobs j WHERE " c ".queue = 'gw' AND j.partition = " c              \
    ".partition AND j.job_id > " c ".last_job_id"                                                  \
    " UNION ALL SELECT created_at FROM rt_jobs j WHERE " c ".queue = 'rt' AND j.partition = " c    \
    ".partition AND j.job_id > " c ".last_job_id"                                                  \
    " UNION ALL SELECT created_at FROM batch_rt_jobs j WHERE " c ".queue = 'batch_rt'"             \
    " AND j.partition = " c ".partition AND j.job_id > " c ".last_job_id) q)"

/* Stages and queues, instances and what they hold, partitions nobody holds,
 * datasets, dead letters. Counts scan the unread part of each partition: a
 * command for an operator, not for a scrape. */
static int status(PGconn *pg)
{
    printf("== queues\n");
    if (print_query(
            pg, "SELECT c.stage, c.queue, sum(x.pending) AS pending,"
                " coalesce(round(extract(epoch FROM now() - min(x.oldest))::numeric, 1)"
                "::text, '-') AS lag_s"
                " FROM cursors c CROSS JOIN LATERAL " PENDING_OF("c") " x"
                                                                      " GROUP BY 1, 2 ORDER BY 1"))
        return 1;
    printf("\n== instances (live: heartbeat not expired)\n");
    if (print_query(pg, "SELECT i.stage, i.instance_id, i.admin_address,"
                        " round(extract(epoch FROM now() - i.heartbeat_at)::numeric, 1)"
                        " AS heartbeat_age_s, count(l.partition) AS partitions,"
                        " coalesce(string_agg(l.partition::text, ',' ORDER BY l.partition), '')"
                        " AS held, i.acquired, i.released"
                        " FROM instances i LEFT JOIN leases l ON l.stage = i.stage"
                        " AND l.owner = i.instance_id AND l.expires_at >= now()"
                        " WHERE i.expires_at >= now()"
                        " GROUP BY i.stage, i.instance_id ORDER BY 1, 2"))
        return 1;
    printf("\n== partitions (owner, epoch, pending jobs and lag of the oldest)\n");
    if (print_query(pg, "SELECT l.stage, l.partition, coalesce(l.owner, '-') AS owner, l.epoch,"
                        " CASE WHEN l.owner IS NULL THEN 'free' WHEN l.expires_at < now()"
                        " THEN 'expired' ELSE 'held' END AS lease, x.pending,"
                        " coalesce(round(extract(epoch FROM now() - x.oldest)::numeric, 1)::text,"
                        " '-') AS lag_s,"
                        " (SELECT count(*) FROM rt_retries r WHERE l.stage = 'router'"
                        " AND r.partition = l.partition) AS retrying"
                        " FROM leases l JOIN cursors c ON c.stage = l.stage"
                        " AND c.partition = l.partition CROSS JOIN LATERAL " PENDING_OF(
                            "c") " x"
                                 " WHERE l.stage IN (SELECT stage FROM instances) OR x.pending > 0"
                                 " ORDER BY 1, 3, 2"))
        return 1;
    printf("\n== partitions with no live owner\n");
    if (print_query(pg, "SELECT stage, count(*) AS partitions,"
                        " string_agg(partition::text, ',' ORDER BY partition) AS which"
                        " FROM leases WHERE owner IS NULL OR expires_at < now()"
                        " GROUP BY 1 ORDER BY 1"))
        return 1;
    printf("\n== datasets\n");
    if (print_query(pg, "SELECT queue, idx, table_name, created_at FROM datasets"
                        " ORDER BY queue, idx"))
        return 1;
    printf("\n== dead letters not replayed\n");
    return print_query(pg, "SELECT stage, destination_id, count(*) AS dead_letters"
                           " FROM dead_letters WHERE replayed_at IS NULL"
                           " GROUP BY 1, 2 ORDER BY 1, 2");
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int o;
    while ((o = getopt(argc, argv, "+c:h")) != -1) {
        switch (o) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    log_init("pintlectl", LOG_INFO);
    if (strcmp(cmd, "config-doc") == 0) {
        Buf b;
        buf_init(&b);
        cfg_format_doc(&b);
        fputs(b.data, stdout);
        buf_deinit(&b);
        return 0;
    }
    Config cfg;
    Err err;
    if (cfg_load(&cfg, path, &err) < 0) {
        fprintf(stderr, "pintlectl: %s\n", err.msg);
        cfg_deinit(&cfg);
        return 2;
    }
    int rc = 0;
    if (strcmp(cmd, "check-config") == 0) {
        Buf b;
        buf_init(&b);
        cfg_format(&cfg, &b);
        fputs(b.data, stdout);
        buf_deinit(&b);
        cfg_deinit(&cfg);
        return 0;
    }
    PGconn *pg = db_connect_blocking(&cfg.db, "pintlectl", &err);
    if (pg == NULL) {
        fprintf(stderr, "pintlectl: %s", err.msg);
        cfg_deinit(&cfg);
        return 1;
    }
    if (strcmp(cmd, "migrate") == 0) {
        int n = migrate_run(pg, cfg.db.schema, cfg.queue.partitions, &err);
        if (n < 0) {
            fprintf(stderr, "pintlectl: %s", err.msg);
            rc = 1;
        } else {
            int v = migrate_current_version(pg, cfg.db.schema, &err);
            log_info("migrated", "schema=%s applied=%d version=%d", cfg.db.schema, n, v);
        }
    } else if (strcmp(cmd, "status") == 0) {
        rc = status(pg);
    } else if (strcmp(cmd, "dead-letters") == 0) {
        rc = print_query(pg,
                         "SELECT id, stage, destination_id, user_id, status_code, reason,"
                         " created_at, replayed_at FROM dead_letters ORDER BY id DESC LIMIT 100");
    } else if (strcmp(cmd, "replay") == 0) {
        const char *dest = NULL, *id = NULL;
        for (int i = optind + 1; i < argc; i += 2) {
            if (i + 1 < argc && strcmp(argv[i], "--destination") == 0) {
                dest = argv[i + 1];
            } else if (i + 1 < argc && strcmp(argv[i], "--id") == 0) {
                id = argv[i + 1];
            } else {
                fprintf(stderr, "pintlectl: replay: unknown or incomplete option \"%s\"\n",
                        argv[i]);
                usage(stderr);
                PQfinish(pg);
                cfg_deinit(&cfg);
                return 2;
            }
        }
        const char *params[2] = {dest, id};
        PGresult *r = PQexecParams(pg, "SELECT replay_dead_letters($1, $2::bigint)", 2, NULL,
                                   params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "pintlectl: could not replay dead letters: %s",
                    PQresultErrorMessage(r));
            rc = 1;
        } else {
            printf("replayed %s dead letters\n", PQgetvalue(r, 0, 0));
        }
        PQclear(r);
    } else {
        usage(stderr);
        rc = 2;
    }
    PQfinish(pg);
    cfg_deinit(&cfg);
    return rc;
}
