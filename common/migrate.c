#include "common/migrate.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/xalloc.h"

static int exec_ok(PGconn *pg, const char *sql, Err *err, const char *what)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = err_set(err, ERR_DB, "could not %s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    return rc;
}

int migrate_current_version(PGconn *pg, const char *schema, Err *err)
{
    const char *params[1] = {schema};
    PGresult *r = PQexecParams(pg,
                               "SELECT to_regclass(quote_ident($1) || '.schema_migrations')"
                               " IS NOT NULL",
                               1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int rc = err_set(err, ERR_DB, "could not read schema version: %s",
                         PQresultErrorMessage(r));
        PQclear(r);
        return rc;
    }
    bool exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!exists)
        return 0;
    char *sql = xasprintf("SELECT coalesce(max(version), 0) FROM \"%s\".schema_migrations", schema);
    r = PQexec(pg, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int rc = err_set(err, ERR_DB, "could not read schema version: %s",
                         PQresultErrorMessage(r));
        PQclear(r);
        return rc;
    }
    int v = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static char *expand(const char *sql, int partitions)
{
    Buf b;
    buf_init(&b);
    const char *tok = "{{partitions}}";
    const char *p = sql;
    const char *hit;
    while ((hit = strstr(p, tok)) != NULL) {
        buf_append(&b, p, (size_t)(hit - p));
        buf_printf(&b, "%d", partitions);
        p = hit + strlen(tok);
    }
    buf_puts(&b, p);
    return buf_take(&b, NULL);
}

int migrate_run(PGconn *pg, const char *schema, int partitions, Err *err)
{
    int applied = 0;
    int rc = exec_ok(pg, "SELECT pg_advisory_lock(hashtext('pintle.migrate'))", err,
                     "take the migration lock");
    if (rc < 0)
        return rc;
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    char *sql = xasprintf("CREATE SCHEMA IF NOT EXISTS \"%s\";"
                          "CREATE TABLE IF NOT EXISTS \"%s\".schema_migrations ("
                          " version int PRIMARY KEY, name text NOT NULL,"
                          " applied_at timestamptz NOT NULL DEFAULT now())",
                          schema, schema);
    rc = exec_ok(pg, sql, err, "create the schema");
    free(sql);
    if (rc < 0)
        goto out;
    int current = migrate_current_version(pg, schema, err);
    if (current < 0) {
        rc = current;
        goto out;
    }
    if (current >= 1) {
        /* the partition count is fixed at install: a different one now
         * would make writers and readers disagree about where rows are */
        char *q = xasprintf("SELECT value FROM \"%s\".meta WHERE key = 'partitions'", schema);
        PGresult *r = PQexec(pg, q);
        free(q);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
            atoi(PQgetvalue(r, 0, 0)) != partitions) {
            rc = err_set(err, ERR_INVALID,
                         "queue.partitions is %d but the jobs schema was installed with %s"
                         " partitions; set queue.partitions = %s",
                         partitions, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 0));
            PQclear(r);
            goto out;
        }
        PQclear(r);
    }
    for (const Migration *m = migrations; m->name != NULL; m++) {
        /* every version not recorded yet is applied, not only those above
         * the highest: a migration merged with a lower number still runs */
        char *q = xasprintf("SELECT 1 FROM \"%s\".schema_migrations WHERE version = %d", schema,
                            m->version);
        PGresult *have = PQexec(pg, q);
        free(q);
        bool done = PQresultStatus(have) == PGRES_TUPLES_OK && PQntuples(have) == 1;
        PQclear(have);
        if (done)
            continue;
        char *body = expand(m->sql, partitions);
        char *full = xasprintf("BEGIN; SET LOCAL search_path TO \"%s\", public;\n%s\n"
                               "INSERT INTO \"%s\".schema_migrations (version, name)"
                               " VALUES (%d, '%s'); COMMIT;",
                               schema, body, schema, m->version, m->name);
        PGresult *r = PQexec(pg, full);
        free(body);
        free(full);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
            rc = err_set(err, ERR_DB, "could not apply migration %s: %s", m->name,
                         PQresultErrorMessage(r));
            PQclear(r);
            PQclear(PQexec(pg, "ROLLBACK"));
            goto out;
        }
        PQclear(r);
        applied++;
    }
    rc = applied;
out:
    PQclear(PQexec(pg, "SELECT pg_advisory_unlock(hashtext('pintle.migrate'))"));
    return rc;
}
