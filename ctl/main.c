/* pintlectl: the operator command line.
 *   migrate          apply pending schema migrations (the explicit migrate step)
 *   status           queues, instances and their leased partitions (lag per
 *                    partition), unowned partitions, datasets, dead letters
 *   destinations     per destination: pending, lag, retrying, parked, paused
 *   retries          list the router's retry rows; `retries abort` gives them up
 *   pause / resume   stop / restart deliveries to one destination
 *   mode             show or set the mode (normal, degraded)
 *   dead-letters     list dead-lettered jobs (filters), or show one with payload
 *   replay           re-queue dead letters: the router's as new rt jobs, the
 *                    processor's as gw jobs for their one destination (--dry-run)
 *   config-doc       print a documented pintle.conf with every default
 *   check-config     validate the configuration and print it
 * Blocking libpq is fine here: this is a short-lived command, not a loop. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/log.h"
#include "common/migrate.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: pintlectl [-c pintle.conf] COMMAND [OPTIONS]\n"
               "commands:\n"
               "  migrate        apply pending schema migrations\n"
               "  status         queues (pending, lag), instances and the partitions they\n"
               "                 lease, unowned partitions, datasets, dead letters\n"
               "  destinations [--cap N]\n"
               "                 per stage and destination: pending jobs (counted up to N per\n"
               "                 partition, default ops.stats_cap), lag of the oldest,\n"
               "                 retrying and parked rows, paused\n"
               "  retries [--destination ID] [--user ID] [--limit N]\n"
               "                 the router's retry rows (heads retrying, jobs parked behind)\n"
               "  retries abort (--id JOB_ID | --destination ID [--user ID])\n"
               "                 give retry rows up: they become dead letters (replayable)\n"
               "  pause DESTINATION [--reason TEXT]\n"
               "                 deliver nothing to a destination; its jobs wait in order\n"
               "  resume DESTINATION\n"
               "  mode [normal|degraded] [--reason TEXT]\n"
               "                 show or set the mode; degraded: gateways store, processors\n"
               "                 and routers forward nothing until normal again\n"
               "  dead-letters [--destination ID] [--stage S] [--since TIME] [--until TIME]\n"
               "               [--reason TEXT] [--limit N] [--payload]\n"
               "                 dead-lettered jobs, newest first (default 100); --reason\n"
               "                 matches a part of the reason; TIME as Postgres reads it\n"
               "  dead-letters show ID\n"
               "                 one dead letter with its payload and response\n"
               "  replay [--destination ID] [--id N] [--dry-run]\n"
               "                 re-queue dead letters (all, one destination's, or one): the\n"
               "                 router's as new rt jobs, the processor's as gw jobs that are\n"
               "                 processed again for their one destination only; --dry-run\n"
               "                 lists what would be re-queued\n"
               "  config-doc     print a documented pintle.conf with every default\n"
               "  check-config   validate the configuration and print it\n");
}

/* One option of a command: "--name" with a value or a flag. */
typedef struct CtlOpt {
    const char *name;
    bool has_value;
    const char *value; /* the value, or "1" for a flag given; NULL: not given */
} CtlOpt;

/* Parses argv[first..] into opts and up to maxpos positional words; an
 * unknown option, a missing value or too many words is an error (printed,
 * returns -1). */
static int parse_opts(const char *cmd, int argc, char **argv, int first, CtlOpt *opts, int nopts,
                      const char **pos, int maxpos, int *npos)
{
    *npos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0) {
            int k = 0;
            while (k < nopts && strcmp(a + 2, opts[k].name) != 0)
                k++;
            if (k == nopts) {
                fprintf(stderr, "pintlectl: %s: unknown option \"%s\" (see pintlectl -h)\n", cmd,
                        a);
                return -1;
            }
            if (!opts[k].has_value) {
                opts[k].value = "1";
                continue;
            }
            if (i + 1 >= argc) {
                fprintf(stderr, "pintlectl: %s: option \"%s\" needs a value\n", cmd, a);
                return -1;
            }
            opts[k].value = argv[++i];
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "pintlectl: %s: unknown option \"%s\" (see pintlectl -h)\n", cmd, a);
            return -1;
        }
        if (*npos >= maxpos) {
            fprintf(stderr, "pintlectl: %s: unexpected argument \"%s\"\n", cmd, a);
            return -1;
        }
        pos[(*npos)++] = a;
    }
    return 0;
}

/* A value that must be a positive integer (ids, limits); NULL stays NULL. */
static bool check_number(const char *cmd, const char *opt, const char *v)
{
    if (v == NULL)
        return true;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n <= 0) {
        fprintf(stderr, "pintlectl: %s: %s wants a positive number, not \"%s\"\n", cmd, opt, v);
        return false;
    }
    return true;
}

/* Runs sql with text parameters (n < 0: none) and prints the rows as a
 * tab-separated table with a header line. */
static int print_params(PGconn *pg, const char *sql, int n, const char *const *params)
{
    PGresult *r = n < 0 ? PQexec(pg, sql) : PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
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

static int print_query(PGconn *pg, const char *sql)
{
    return print_params(pg, sql, -1, NULL);
}

/* Runs a statement that returns one value; prints fmt with it. */
static int exec_one(PGconn *pg, const char *what, const char *sql, int n,
                    const char *const *params, const char *fmt)
{
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "pintlectl: could not %s: %s", what, PQresultErrorMessage(r));
        PQclear(r);
        return 1;
    }
    printf(fmt, PQgetvalue(r, 0, 0));
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
    printf("\n== raw archive (sources whose gw events are archived before their dataset drops)\n");
    if (print_query(pg, "SELECT s.workspace_id, s.source_id,"
                        " count(j.batch_id) AS objects_planned,"
                        " coalesce(max(j.attempts), 0) AS max_attempts,"
                        " coalesce(max(j.last_error), '') AS last_error,"
                        " (SELECT count(*) FROM archive_low a WHERE EXISTS (SELECT 1 FROM gw_jobs g"
                        " WHERE g.partition = a.partition AND g.job_id > a.last_job_id))"
                        " AS partitions_behind"
                        " FROM (SELECT source_id, min(workspace_id) AS workspace_id"
                        " FROM archive_sources GROUP BY 1) s LEFT JOIN archive_journal j"
                        " ON j.source_id = s.source_id GROUP BY 1, 2 ORDER BY 1, 2"))
        return 1;
    printf("\n== dead letters not replayed\n");
    return print_query(pg, "SELECT stage, destination_id, count(*) AS dead_letters"
                           " FROM dead_letters WHERE replayed_at IS NULL"
                           " GROUP BY 1, 2 ORDER BY 1, 2");
}

/* Per stage and destination: pending (beyond the cursors, up to cap per
 * partition, plus the router's rt_retries rows), lag, retrying, parked. */
static int destinations(PGconn *pg, const char *cap)
{
    const char *params[1] = {cap};
    return print_params(
        pg,
        "SELECT s.stage, s.destination_id, sum(s.pending)::bigint AS pending,"
        " coalesce(round(extract(epoch FROM now() - min(s.oldest))::numeric, 1)::text, '-')"
        " AS lag_s, sum(s.retrying)::bigint AS retrying, sum(s.parked)::bigint AS parked,"
        " bool_or(s.capped) AS capped, EXISTS (SELECT 1 FROM paused_destinations p"
        " WHERE p.destination_id = s.destination_id) AS paused"
        " FROM (SELECT 'router' AS stage, destination_id, pending, oldest, 0 AS retrying,"
        " 0 AS parked, capped FROM queue_stats('router', NULL, $1::int)"
        " UNION ALL SELECT 'router', destination_id, retrying + parked, oldest, retrying,"
        " parked, false FROM retry_stats(NULL)"
        " UNION ALL SELECT 'batchrouter', destination_id, pending, oldest, 0, 0, capped"
        " FROM queue_stats('batchrouter', NULL, $1::int)"
        " UNION ALL SELECT 'router', destination_id, 0, NULL, 0, 0, false"
        " FROM paused_destinations) s"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        1, params);
}

static int cmd_retries(PGconn *pg, const char *cmd, int argc, char **argv, int first)
{
    CtlOpt o[] = {{"destination", true, NULL}, {"user", true, NULL}, {"limit", true, NULL},
                  {"id", true, NULL}};
    const char *pos[1];
    int npos;
    if (parse_opts(cmd, argc, argv, first, o, 4, pos, 1, &npos) < 0)
        return 2;
    if (!check_number(cmd, "--limit", o[2].value) || !check_number(cmd, "--id", o[3].value))
        return 2;
    if (npos == 1 && strcmp(pos[0], "abort") == 0) {
        if (o[3].value == NULL && o[0].value == NULL) {
            fprintf(stderr, "pintlectl: retries abort: give --id JOB_ID or --destination ID\n");
            return 2;
        }
        const char *params[3] = {o[3].value, o[0].value, o[1].value};
        return exec_one(pg, "abort retry rows",
                        "SELECT abort_retries($1::bigint, $2, $3)", 3, params,
                        "aborted %s retry rows into dead letters\n");
    }
    if (npos == 1) {
        fprintf(stderr, "pintlectl: retries: unknown subcommand \"%s\" (abort)\n", pos[0]);
        return 2;
    }
    const char *params[4] = {o[0].value, o[1].value, o[2].value ? o[2].value : "100", o[3].value};
    return print_params(
        pg,
        "SELECT job_id, destination_id, user_id, CASE WHEN parked THEN 'parked' ELSE 'retrying'"
        " END AS state, attempts, first_failed_at, next_retry_at, last_status,"
        " left(coalesce(last_error, ''), 120) AS last_error FROM rt_retries"
        " WHERE ($1::text IS NULL OR destination_id = $1) AND ($2::text IS NULL OR user_id = $2)"
        " AND ($4::bigint IS NULL OR job_id = $4)"
        " ORDER BY destination_id, user_id, job_id LIMIT $3::int",
        4, params);
}

static int cmd_pause(PGconn *pg, const char *cmd, int argc, char **argv, int first, bool pause)
{
    CtlOpt o[] = {{"reason", true, NULL}};
    const char *pos[1];
    int npos;
    if (parse_opts(cmd, argc, argv, first, o, pause ? 1 : 0, pos, 1, &npos) < 0)
        return 2;
    if (npos != 1) {
        fprintf(stderr, "pintlectl: %s: give the destination id\n", cmd);
        return 2;
    }
    const char *params[2] = {pos[0], o[0].value ? o[0].value : ""};
    if (pause)
        return exec_one(pg, "pause the destination",
                        "INSERT INTO paused_destinations (destination_id, reason) VALUES ($1, $2)"
                        " ON CONFLICT (destination_id) DO UPDATE SET reason = excluded.reason"
                        " RETURNING destination_id",
                        2, params, "paused %s\n");
    return exec_one(pg, "resume the destination",
                    "WITH d AS (DELETE FROM paused_destinations WHERE destination_id = $1"
                    " RETURNING 1) SELECT CASE WHEN EXISTS (SELECT 1 FROM d) THEN 'resumed '"
                    " ELSE 'was not paused: ' END || $1",
                    1, params, "%s\n");
}

static int cmd_mode(PGconn *pg, const char *cmd, int argc, char **argv, int first)
{
    CtlOpt o[] = {{"reason", true, NULL}};
    const char *pos[1];
    int npos;
    if (parse_opts(cmd, argc, argv, first, o, 1, pos, 1, &npos) < 0)
        return 2;
    if (npos == 1) {
        if (strcmp(pos[0], "normal") != 0 && strcmp(pos[0], "degraded") != 0) {
            fprintf(stderr, "pintlectl: mode: \"%s\" is not a mode (normal, degraded)\n", pos[0]);
            return 2;
        }
        const char *params[2] = {pos[0], o[0].value ? o[0].value : "set by pintlectl"};
        PGresult *r = PQexecParams(pg, "SELECT set_mode($1, $2, 'pintlectl')", 2, NULL, params,
                                   NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "pintlectl: could not set the mode: %s", PQresultErrorMessage(r));
            PQclear(r);
            return 1;
        }
        PQclear(r);
    } else if (o[0].value) {
        fprintf(stderr, "pintlectl: mode: --reason goes with a mode to set\n");
        return 2;
    }
    return print_query(pg, "SELECT mode, reason, changed_by, changed_at FROM ops_mode");
}

static int cmd_dead_letters(PGconn *pg, const char *cmd, int argc, char **argv, int first)
{
    CtlOpt o[] = {{"destination", true, NULL}, {"stage", true, NULL}, {"since", true, NULL},
                  {"until", true, NULL},       {"reason", true, NULL}, {"limit", true, NULL},
                  {"payload", false, NULL}};
    const char *pos[2];
    int npos;
    if (parse_opts(cmd, argc, argv, first, o, 7, pos, 2, &npos) < 0)
        return 2;
    if (!check_number(cmd, "--limit", o[5].value))
        return 2;
    if (npos >= 1 && strcmp(pos[0], "show") == 0) {
        if (npos != 2 || !check_number(cmd, "show", pos[1])) {
            fprintf(stderr, "pintlectl: dead-letters show: give one dead letter id\n");
            return 2;
        }
        const char *params[1] = {pos[1]};
        PGresult *r = PQexecParams(
            pg,
            "SELECT id, stage, queue, job_id, workspace_id, source_id, destination_id, user_id,"
            " partition, status_code, attempts, reason, created_at, replayed_at,"
            " coalesce(response, '') AS response, payload FROM dead_letters WHERE id = $1::bigint",
            1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "pintlectl: query failed: %s", PQresultErrorMessage(r));
            PQclear(r);
            return 1;
        }
        int rc = 0;
        if (PQntuples(r) == 0) {
            fprintf(stderr, "pintlectl: no dead letter %s\n", pos[1]);
            rc = 1;
        } else {
            for (int j = 0; j < PQnfields(r); j++)
                printf("%s: %s\n", PQfname(r, j), PQgetvalue(r, 0, j));
        }
        PQclear(r);
        return rc;
    }
    if (npos > 0) {
        fprintf(stderr, "pintlectl: dead-letters: unexpected argument \"%s\" (show ID)\n", pos[0]);
        return 2;
    }
    const char *params[6] = {o[0].value, o[1].value, o[2].value,
                             o[3].value, o[4].value, o[5].value ? o[5].value : "100"};
    char sql[1200];
    snprintf(sql, sizeof sql,
             "SELECT id, stage, destination_id, user_id, status_code, reason, created_at,"
             " replayed_at%s FROM dead_letters"
             " WHERE ($1::text IS NULL OR destination_id = $1) AND ($2::text IS NULL OR stage = $2)"
             " AND ($3::timestamptz IS NULL OR created_at >= $3::timestamptz)"
             " AND ($4::timestamptz IS NULL OR created_at < $4::timestamptz)"
             " AND ($5::text IS NULL OR strpos(reason, $5) > 0)"
             " ORDER BY id DESC LIMIT $6::int",
             o[6].value ? ", payload" : "");
    return print_params(pg, sql, 6, params);
}

static int cmd_replay(PGconn *pg, const char *cmd, int argc, char **argv, int first)
{
    CtlOpt o[] = {{"destination", true, NULL}, {"id", true, NULL}, {"dry-run", false, NULL}};
    const char *pos[1];
    int npos;
    if (parse_opts(cmd, argc, argv, first, o, 3, pos, 0, &npos) < 0)
        return 2;
    if (!check_number(cmd, "--id", o[1].value))
        return 2;
    const char *params[2] = {o[0].value, o[1].value};
    if (o[2].value) {
        /* what replay_dead_letters would take (sql/006) */
        printf("dry run: nothing is re-queued\n");
        return print_params(
            pg,
            "SELECT id, stage, CASE stage WHEN 'processor' THEN 'gw' ELSE 'rt' END AS requeue_to,"
            " destination_id, user_id, partition, reason, created_at FROM dead_letters"
            " WHERE stage IN ('processor', 'router') AND replayed_at IS NULL"
            " AND partition IS NOT NULL AND ($1::text IS NULL OR destination_id = $1)"
            " AND ($2::bigint IS NULL OR id = $2::bigint) ORDER BY id",
            2, params);
    }
    return exec_one(pg, "replay dead letters", "SELECT replay_dead_letters($1, $2::bigint)", 2,
                    params, "replayed %s dead letters\n");
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
    static const char *const known[] = {"migrate", "status",       "destinations", "retries",
                                        "pause",   "resume",       "mode",         "dead-letters",
                                        "replay",  "config-doc",   "check-config"};
    static const char *const no_args[] = {"migrate", "status", "config-doc", "check-config"};
    bool is_known = false;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        is_known |= strcmp(cmd, known[i]) == 0;
    if (!is_known) {
        fprintf(stderr, "pintlectl: unknown command \"%s\" (see pintlectl -h)\n", cmd);
        return 2;
    }
    for (size_t i = 0; i < sizeof no_args / sizeof no_args[0]; i++)
        if (strcmp(cmd, no_args[i]) == 0 && optind + 1 < argc) {
            fprintf(stderr, "pintlectl: %s: unknown option or argument \"%s\" (see pintlectl -h)\n",
                    cmd, argv[optind + 1]);
            return 2;
        }
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
    } else if (strcmp(cmd, "destinations") == 0) {
        CtlOpt co[] = {{"cap", true, NULL}};
        const char *pos[1];
        int npos;
        char cap[16];
        snprintf(cap, sizeof cap, "%d", cfg.ops.stats_cap);
        if (parse_opts(cmd, argc, argv, optind + 1, co, 1, pos, 0, &npos) < 0 ||
            !check_number(cmd, "--cap", co[0].value))
            rc = 2;
        else
            rc = destinations(pg, co[0].value ? co[0].value : cap);
    } else if (strcmp(cmd, "retries") == 0) {
        rc = cmd_retries(pg, cmd, argc, argv, optind + 1);
    } else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
        rc = cmd_pause(pg, cmd, argc, argv, optind + 1, strcmp(cmd, "pause") == 0);
    } else if (strcmp(cmd, "mode") == 0) {
        rc = cmd_mode(pg, cmd, argc, argv, optind + 1);
    } else if (strcmp(cmd, "dead-letters") == 0) {
        rc = cmd_dead_letters(pg, cmd, argc, argv, optind + 1);
    } else if (strcmp(cmd, "replay") == 0) {
        rc = cmd_replay(pg, cmd, argc, argv, optind + 1);
    } else {
        fprintf(stderr, "pintlectl: unknown command \"%s\"\n", cmd);
        usage(stderr);
        rc = 2;
    }
    PQfinish(pg);
    cfg_deinit(&cfg);
    return rc;
}
