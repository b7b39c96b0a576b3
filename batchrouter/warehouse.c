/* The Postgres warehouse (see warehouse.h). One load, step by step, all in
 * one transaction on the destination's own connection:
 *   1. pg_advisory_xact_lock on the namespace: loads into one namespace
 *      (two destinations sharing it) run one after the other, so their DDL
 *      and users upserts can never deadlock each other;
 *   2. the schema and the ledger <namespace>.pintle_loads are created if
 *      missing; a load_id already in the ledger ends here (already_loaded);
 *   3. the events become rows (wh_rows); the namespace's columns are read
 *      from the catalog; missing tables are created and missing columns
 *      added with the type of the first value that needs them;
 *   4. every value is checked against its column's type (wh_value_fit):
 *      a misfit leaves the column NULL and goes to rudder_discards;
 *   5. each table gets one COPY; users are merged per id in the batch (the
 *      later event's traits win) and upserted from a staging table, keeping
 *      an existing column when the batch has no value for it;
 *   6. the ledger row, then COMMIT.
 * A crash before the COMMIT leaves nothing; a reload after it finds the
 * ledger row and inserts nothing. */
#include "batchrouter/warehouse.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchrouter/wh_names.h"
#include "batchrouter/wh_rows.h"
#include "batchrouter/wh_types.h"
#include "common/buf.h"
#include "common/hmap.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"

struct Warehouse {
    char *host, *port, *dbname, *user, *password, *sslmode;
    char ns[WH_NAME_BUF];
    char options[96];
    char timeout[16];
    PGconn *conn;
};

static char *cfg_str(json_object *cfg, const char *key, const char *def)
{
    json_object *v = jsonu_get_ci(cfg, key);
    if (v == NULL || json_object_is_type(v, json_type_null))
        return def ? xstrdup(def) : NULL;
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                             : json_object_to_json_string(v);
    if (s[0] == '\0')
        return def ? xstrdup(def) : NULL;
    return xstrdup(s);
}

Warehouse *warehouse_create(const char *config_json, const WarehouseSettings *s, Err *err)
{
    json_object *cfg = json_tokener_parse(config_json ? config_json : "{}");
    if (cfg == NULL || !json_object_is_type(cfg, json_type_object)) {
        json_object_put(cfg);
        err_set(err, ERR_INVALID, "the destination config is not a JSON object");
        return NULL;
    }
    Warehouse *w = xcalloc(1, sizeof *w);
    w->host = cfg_str(cfg, "host", NULL);
    w->dbname = cfg_str(cfg, "database", NULL);
    w->port = cfg_str(cfg, "port", "5432");
    w->user = cfg_str(cfg, "user", NULL);
    w->password = cfg_str(cfg, "password", NULL);
    char *ssl = cfg_str(cfg, "sslMode", "disable");
    char *ns = cfg_str(cfg, "namespace", NULL);
    if (ns == NULL || ns[0] == '\0') {
        free(ns);
        ns = xstrdup(s->default_namespace ? s->default_namespace : "rudder");
    }
    json_object_put(cfg);
    wh_name_namespace(ns, w->ns, sizeof w->ns);
    free(ns);
    static const char *const modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(ssl, modes[i]) == 0)
            w->sslmode = xstrdup(ssl);
    if (w->host == NULL || w->dbname == NULL || w->sslmode == NULL) {
        err_set(err, ERR_INVALID, "the POSTGRES destination config has %s",
                w->host == NULL     ? "no host"
                : w->dbname == NULL ? "no database"
                                    : "an unknown sslMode");
        free(ssl);
        warehouse_destroy(w);
        return NULL;
    }
    free(ssl);
    /* hmap's hash key is set on first use: set it here, on the loop's
     * thread, before worker threads hash */
    (void)hmap_hash("");
    snprintf(w->options, sizeof w->options,
             "-c statement_timeout=%d -c client_min_messages=warning", s->statement_timeout_ms);
    snprintf(w->timeout, sizeof w->timeout, "%d", s->connect_timeout_s);
    return w;
}

void warehouse_destroy(Warehouse *w)
{
    if (w == NULL)
        return;
    if (w->conn)
        PQfinish(w->conn);
    free(w->host);
    free(w->port);
    free(w->dbname);
    free(w->user);
    free(w->password);
    free(w->sslmode);
    free(w);
}

static int wh_connect(Warehouse *w, Err *err)
{
    if (w->conn && PQstatus(w->conn) == CONNECTION_OK)
        return 0;
    if (w->conn)
        PQfinish(w->conn);
    const char *keys[] = {"host",
                          "port",
                          "dbname",
                          "user",
                          "password",
                          "sslmode",
                          "connect_timeout",
                          "options",
                          "application_name",
                          "keepalives_idle",
                          NULL};
    const char *vals[] = {w->host,    w->port,     w->dbname,
                          w->user,    w->password, w->sslmode,
                          w->timeout, w->options,  "pintle-batchrouter-warehouse",
                          "10",       NULL};
    w->conn = PQconnectdbParams(keys, vals, 0);
    if (PQstatus(w->conn) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(w->conn));
        msg[strcspn(msg, "\n")] = '\0';
        PQfinish(w->conn);
        w->conn = NULL;
        return err_set(err, ERR_AGAIN, "could not connect to the warehouse %s:%s/%s: %s", w->host,
                       w->port, w->dbname, msg);
    }
    return 0;
}

/* The status a failed statement gives the load: data and definition errors
 * (classes 22, 23, 42 but privileges, 54 limits such as too many columns)
 * are the batch's own: abort; anything
 * else (connection, timeouts, locks, resources) is worth a retry. */
static WhStatus classify(PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (st == NULL)
        return WH_RETRY;
    if (strncmp(st, "22", 2) == 0 || strncmp(st, "23", 2) == 0 || strncmp(st, "54", 2) == 0 ||
        (strncmp(st, "42", 2) == 0 && strcmp(st, "42501") != 0))
        return WH_ABORT;
    return WH_RETRY;
}

/* Runs sql; on failure sets err (with the server's message) and *st. */
static int run(Warehouse *w, const char *sql, int np, const char *const *params, PGresult **out,
               WhStatus *st, Err *err)
{
    PGresult *r = PQexecParams(w->conn, sql, np, NULL, params, NULL, NULL, 0);
    ExecStatusType es = PQresultStatus(r);
    if (es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK) {
        if (out)
            *out = r;
        else
            PQclear(r);
        return 0;
    }
    char msg[600];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(w->conn));
    msg[strcspn(msg, "\n")] = '\0';
    *st = PQstatus(w->conn) == CONNECTION_OK ? classify(r) : WH_RETRY;
    PQclear(r);
    return err_set(err, ERR_AGAIN, "%s", msg[0] ? msg : "the warehouse failed a statement");
}

static void put_ident(Buf *b, const char *name)
{
    buf_putc(b, '"');
    for (const char *p = name; *p; p++) {
        if (*p == '"')
            buf_putc(b, '"');
        buf_putc(b, *p);
    }
    buf_putc(b, '"');
}

static void put_table(Buf *b, const Warehouse *w, const char *table)
{
    put_ident(b, w->ns);
    buf_putc(b, '.');
    put_ident(b, table);
}

/* One table of the load: its columns (name -> WhType + 1 as a pointer) and
 * its rows. */
typedef struct Table {
    char name[WH_NAME_BUF];
    bool exists, is_users;
    HMap types;   /* column -> (void *)(intptr_t)(WhType + 1) */
    char **order; /* the columns written, in first-seen order */
    int ncols, cap;
    int *rows; /* indices into the WhRows */
    int nrows, rcap;
} Table;

typedef struct Load {
    Warehouse *w;
    WhRows rows;
    HMap tables; /* name -> Table* */
    Table **list;
    int ntables, tcap;
    Buf sql, copy;
    char uuid_ts[32];
    WhResult *res;
} Load;

static Table *table_get(Load *l, const char *name)
{
    Table *t = hmap_get(&l->tables, name);
    if (t)
        return t;
    t = xcalloc(1, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    hmap_init(&t->types);
    hmap_put(&l->tables, name, t);
    if (l->ntables == l->tcap) {
        l->tcap = l->tcap ? l->tcap * 2 : 16;
        l->list = xrealloc(l->list, (size_t)l->tcap * sizeof *l->list);
    }
    l->list[l->ntables++] = t;
    return t;
}

static int col_type(const Table *t, const char *col)
{
    void *v = hmap_get(&t->types, col);
    return v ? (int)(intptr_t)v - 1 : -1;
}

static void col_note(Table *t, const char *col, WhType type)
{
    hmap_put(&t->types, col, (void *)(intptr_t)(type + 1));
}

static void order_add(Table *t, const char *col)
{
    if (t->ncols == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 32;
        t->order = xrealloc(t->order, (size_t)t->cap * sizeof *t->order);
    }
    t->order[t->ncols++] = xstrdup(col);
}

static void load_free(Load *l)
{
    for (int i = 0; i < l->ntables; i++) {
        Table *t = l->list[i];
        hmap_deinit(&t->types);
        for (int k = 0; k < t->ncols; k++)
            free(t->order[k]);
        free(t->order);
        free(t->rows);
        free(t);
    }
    free(l->list);
    hmap_deinit(&l->tables);
    wh_rows_clear(&l->rows);
    buf_deinit(&l->sql);
    buf_deinit(&l->copy);
}

/* Reads the namespace's tables and columns from the catalog. */
static int read_schema(Load *l, WhStatus *st, Err *err)
{
    PGresult *r;
    const char *p[] = {l->w->ns};
    if (run(l->w,
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0"
            " AND NOT a.attisdropped",
            1, p, &r, st, err) < 0)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        Table *t = table_get(l, PQgetvalue(r, i, 0));
        t->exists = true;
        col_note(t, PQgetvalue(r, i, 1), wh_type_from_pg(PQgetvalue(r, i, 2)));
    }
    PQclear(r);
    return 0;
}

/* Users rows of the batch merged per id, in order: a later value wins. */
static void merge_users(Load *l, Table *t)
{
    HMap first; /* id -> row index + 1 */
    hmap_init(&first);
    int kept = 0;
    for (int i = 0; i < t->nrows; i++) {
        WhRow *row = &l->rows.rows[t->rows[i]];
        const WhCol *id = wh_row_get(row, "id");
        if (id == NULL)
            continue;
        void *prev = hmap_get(&first, id->value.text);
        if (prev == NULL) {
            hmap_put(&first, id->value.text, (void *)(intptr_t)(kept + 1));
            t->rows[kept++] = t->rows[i];
            continue;
        }
        WhRow *into = &l->rows.rows[t->rows[(intptr_t)prev - 1]];
        for (int c = 0; c < row->ncols; c++) {
            WhCol *src = &row->cols[c];
            bool done = false;
            for (int k = 0; k < into->ncols && !done; k++) {
                if (strcmp(into->cols[k].name, src->name) == 0) {
                    free(into->cols[k].value.text);
                    into->cols[k].value = src->value;
                    done = true;
                }
            }
            if (!done) {
                if (into->ncols == into->cap) {
                    into->cap = into->cap ? into->cap * 2 : 32;
                    into->cols = xrealloc(into->cols, (size_t)into->cap * sizeof *into->cols);
                }
                into->cols[into->ncols++] = *src;
            }
            src->value.text = NULL;
        }
    }
    t->nrows = kept;
    hmap_deinit(&first);
}

/* Creates missing tables and columns (types from the first value). */
static int ddl(Load *l, WhStatus *st, Err *err)
{
    for (int ti = 0; ti < l->ntables; ti++) {
        Table *t = l->list[ti];
        if (t->nrows == 0)
            continue;
        /* the columns this load writes, and the new ones with their type */
        HMap seen;
        hmap_init(&seen);
        char **newc = NULL;
        WhType *newt = NULL;
        int nnew = 0, capnew = 0;
        for (int i = 0; i < t->nrows; i++) {
            const WhRow *row = &l->rows.rows[t->rows[i]];
            for (int c = 0; c < row->ncols; c++) {
                const WhCol *col = &row->cols[c];
                if (col->value.text == NULL || hmap_get(&seen, col->name))
                    continue;
                hmap_put(&seen, col->name, (void *)1);
                order_add(t, col->name);
                if (col_type(t, col->name) < 0) {
                    if (nnew == capnew) {
                        capnew = capnew ? capnew * 2 : 16;
                        newc = xrealloc(newc, (size_t)capnew * sizeof *newc);
                        newt = xrealloc(newt, (size_t)capnew * sizeof *newt);
                    }
                    newc[nnew] = t->order[t->ncols - 1];
                    newt[nnew++] = col->value.type;
                    col_note(t, col->name, col->value.type);
                }
            }
        }
        hmap_deinit(&seen);
        Buf *s = &l->sql;
        int rc = 0;
        if (!t->exists) {
            buf_reset(s);
            buf_puts(s, "CREATE TABLE IF NOT EXISTS ");
            put_table(s, l->w, t->name);
            buf_puts(s, " (");
            for (int i = 0; i < nnew; i++) {
                put_ident(s, newc[i]);
                buf_printf(s, " %s%s, ", wh_type_pg(newt[i]),
                           t->is_users && strcmp(newc[i], "id") == 0 ? " PRIMARY KEY" : "");
            }
            buf_puts(s, "uuid_ts timestamptz)");
            rc = run(l->w, s->data, 0, NULL, NULL, st, err);
            col_note(t, "uuid_ts", WH_TYPE_DATETIME);
            t->exists = true;
        } else {
            for (int i = 0; i < nnew && rc == 0; i++) {
                buf_reset(s);
                buf_puts(s, "ALTER TABLE ");
                put_table(s, l->w, t->name);
                buf_puts(s, " ADD COLUMN IF NOT EXISTS ");
                put_ident(s, newc[i]);
                buf_printf(s, " %s", wh_type_pg(newt[i]));
                rc = run(l->w, s->data, 0, NULL, NULL, st, err);
                l->res->columns_added++;
            }
            if (rc == 0 && col_type(t, "uuid_ts") < 0) {
                buf_reset(s);
                buf_puts(s, "ALTER TABLE ");
                put_table(s, l->w, t->name);
                buf_puts(s, " ADD COLUMN IF NOT EXISTS uuid_ts timestamptz");
                rc = run(l->w, s->data, 0, NULL, NULL, st, err);
                col_note(t, "uuid_ts", WH_TYPE_DATETIME);
            }
        }
        free(newc);
        free(newt);
        if (rc < 0)
            return err_prefix(err, "table %s", t->name);
    }
    return 0;
}

static int copy_end(Load *l, const char *what, WhStatus *st, Err *err)
{
    PGconn *c = l->w->conn;
    if (PQputCopyData(c, l->copy.data, (int)l->copy.len) != 1 || PQputCopyEnd(c, NULL) != 1) {
        *st = WH_RETRY;
        return err_set(err, ERR_AGAIN, "COPY into %s: %s", what, PQerrorMessage(c));
    }
    int rc = 0;
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
            msg[strcspn(msg, "\n")] = '\0';
            *st = PQstatus(c) == CONNECTION_OK ? classify(r) : WH_RETRY;
            rc = err_set(err, ERR_AGAIN, "COPY into %s: %s", what, msg);
        }
        PQclear(r);
    }
    return rc;
}

static int copy_begin(Load *l, const char *schema_table_sql, WhStatus *st, Err *err)
{
    PGresult *r = PQexec(l->w->conn, schema_table_sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(l->w->conn));
        msg[strcspn(msg, "\n")] = '\0';
        *st = PQstatus(l->w->conn) == CONNECTION_OK ? classify(r) : WH_RETRY;
        PQclear(r);
        return err_set(err, ERR_AGAIN, "%s", msg);
    }
    PQclear(r);
    buf_reset(&l->copy);
    return 0;
}

/* COPY of one table (users into a staging table, then the upsert); the
 * misfits go to the discards buffer. */
static int write_table(Load *l, Table *t, Buf *discards, int *ndiscards, WhStatus *st, Err *err)
{
    Buf *s = &l->sql;
    buf_reset(s);
    const char *target = t->name;
    if (t->is_users) {
        buf_puts(s, "CREATE TEMP TABLE IF NOT EXISTS pintle_users_stage (LIKE ");
        put_table(s, l->w, t->name);
        buf_puts(s, ") ON COMMIT DROP");
        if (run(l->w, s->data, 0, NULL, NULL, st, err) < 0)
            return -1;
        buf_reset(s);
        buf_puts(s, "COPY pintle_users_stage (");
    } else {
        buf_puts(s, "COPY ");
        put_table(s, l->w, target);
        buf_puts(s, " (");
    }
    for (int c = 0; c < t->ncols; c++) {
        put_ident(s, t->order[c]);
        buf_puts(s, ", ");
    }
    buf_puts(s, "uuid_ts) FROM STDIN");
    if (copy_begin(l, s->data, st, err) < 0)
        return -1;
    Buf val;
    buf_init(&val);
    for (int i = 0; i < t->nrows; i++) {
        const WhRow *row = &l->rows.rows[t->rows[i]];
        const WhCol *id = wh_row_get(row, "id");
        const WhCol *recv = wh_row_get(row, "received_at");
        for (int c = 0; c < t->ncols; c++) {
            const WhCol *col = wh_row_get(row, t->order[c]);
            if (col == NULL || col->value.text == NULL) {
                buf_puts(&l->copy, "\\N\t");
                continue;
            }
            buf_reset(&val);
            int ct = col_type(t, col->name);
            if (ct >= 0 && wh_value_fit((WhType)ct, &col->value, &val) == WH_FIT_KEEP) {
                buf_put_copy_text(&l->copy, val.data, val.len);
                buf_putc(&l->copy, '\t');
                continue;
            }
            buf_puts(&l->copy, "\\N\t");
            /* table_name, row_id, column_name, column_value, received_at, uuid_ts */
            buf_put_copy_text(discards, t->name, strlen(t->name));
            buf_putc(discards, '\t');
            if (id)
                buf_put_copy_text(discards, id->value.text, strlen(id->value.text));
            else
                buf_puts(discards, "\\N");
            buf_putc(discards, '\t');
            buf_put_copy_text(discards, col->name, strlen(col->name));
            buf_putc(discards, '\t');
            buf_put_copy_text(discards, col->value.text, strlen(col->value.text));
            buf_putc(discards, '\t');
            buf_puts(discards, recv ? recv->value.text : l->uuid_ts);
            buf_printf(discards, "\t%s\n", l->uuid_ts);
            (*ndiscards)++;
        }
        buf_puts(&l->copy, l->uuid_ts);
        buf_putc(&l->copy, '\n');
    }
    buf_deinit(&val);
    if (copy_end(l, t->name, st, err) < 0)
        return -1;
    l->res->rows += t->nrows;
    l->res->tables++;
    if (!t->is_users)
        return 0;
    buf_reset(s);
    buf_puts(s, "INSERT INTO ");
    put_table(s, l->w, t->name);
    buf_puts(s, " AS u (");
    for (int c = 0; c < t->ncols; c++) {
        put_ident(s, t->order[c]);
        buf_puts(s, ", ");
    }
    buf_puts(s, "uuid_ts) SELECT ");
    for (int c = 0; c < t->ncols; c++) {
        put_ident(s, t->order[c]);
        buf_puts(s, ", ");
    }
    buf_puts(s, "uuid_ts FROM pintle_users_stage ON CONFLICT (id) DO UPDATE SET ");
    for (int c = 0; c < t->ncols; c++) {
        if (strcmp(t->order[c], "id") == 0)
            continue;
        put_ident(s, t->order[c]);
        buf_puts(s, " = COALESCE(EXCLUDED.");
        put_ident(s, t->order[c]);
        buf_puts(s, ", u.");
        put_ident(s, t->order[c]);
        buf_puts(s, "), ");
    }
    buf_puts(s, "uuid_ts = EXCLUDED.uuid_ts");
    return run(l->w, s->data, 0, NULL, NULL, st, err);
}

static int write_discards(Load *l, Buf *discards, WhStatus *st, Err *err)
{
    Buf *s = &l->sql;
    buf_reset(s);
    buf_puts(s, "CREATE TABLE IF NOT EXISTS ");
    put_table(s, l->w, "rudder_discards");
    buf_puts(s, " (table_name text, row_id text, column_name text, column_value text,"
                " received_at timestamptz, uuid_ts timestamptz)");
    if (run(l->w, s->data, 0, NULL, NULL, st, err) < 0)
        return -1;
    buf_reset(s);
    buf_puts(s, "COPY ");
    put_table(s, l->w, "rudder_discards");
    buf_puts(s, " (table_name, row_id, column_name, column_value, received_at, uuid_ts)"
                " FROM STDIN");
    if (copy_begin(l, s->data, st, err) < 0)
        return -1;
    buf_append(&l->copy, discards->data, discards->len);
    return copy_end(l, "rudder_discards", st, err);
}

static void now_iso(char out[32])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
}

static int load_tx(Load *l, const WhLoad *in, WhStatus *st, Err *err)
{
    Warehouse *w = l->w;
    Buf *s = &l->sql;
    const char *ns[] = {w->ns};
    if (run(w, "SELECT pg_advisory_xact_lock(hashtext('pintle_warehouse:' || $1))", 1, ns, NULL, st,
            err) < 0)
        return -1;
    buf_reset(s);
    buf_puts(s, "CREATE SCHEMA IF NOT EXISTS ");
    put_ident(s, w->ns);
    if (run(w, s->data, 0, NULL, NULL, st, err) < 0)
        return -1;
    buf_reset(s);
    buf_puts(s, "CREATE TABLE IF NOT EXISTS ");
    put_table(s, w, "pintle_loads");
    buf_puts(s, " (load_id text PRIMARY KEY, source_id text, destination_id text,"
                " events integer, rows bigint, loaded_at timestamptz NOT NULL DEFAULT now())");
    if (run(w, s->data, 0, NULL, NULL, st, err) < 0)
        return -1;
    buf_reset(s);
    buf_puts(s, "SELECT 1 FROM ");
    put_table(s, w, "pintle_loads");
    buf_puts(s, " WHERE load_id = $1");
    PGresult *r;
    const char *lid[] = {in->load_id};
    if (run(w, s->data, 1, lid, &r, st, err) < 0)
        return -1;
    bool seen = PQntuples(r) > 0;
    PQclear(r);
    if (seen) {
        l->res->already_loaded = true;
        return 0;
    }
    /* rows */
    char now[32];
    now_iso(now);
    snprintf(l->uuid_ts, sizeof l->uuid_ts, "%s", now);
    /* events RudderStack's transform fails (no object, unknown type): the
     * processor only sends the types the destination takes, so this is
     * rare; they are logged once per load with the first reason */
    int invalid = 0, first_bad = -1;
    Err bad;
    err_clear(&bad);
    for (int i = 0; i < in->nevents; i++) {
        char auto_id[200];
        snprintf(auto_id, sizeof auto_id, "auto-%s-%d", in->load_id, i);
        WhEventMeta meta = {in->source_id, in->destination_id, now, auto_id};
        Err e2;
        if (wh_rows_add_event(&l->rows, in->events[i], in->lens[i], &meta, &e2) < 0) {
            if (invalid++ == 0) {
                first_bad = i;
                bad = e2;
            }
        }
    }
    if (invalid > 0) {
        char q[600];
        log_warn("warehouse_events_skipped", "load_id=%s skipped=%d first_index=%d error=%s",
                 in->load_id, invalid, first_bad, log_quote(q, sizeof q, bad.msg));
    }
    if (read_schema(l, st, err) < 0)
        return -1;
    for (int i = 0; i < l->rows.n; i++) {
        Table *t = table_get(l, l->rows.rows[i].table);
        t->is_users = l->rows.rows[i].is_users;
        if (t->nrows == t->rcap) {
            t->rcap = t->rcap ? t->rcap * 2 : 64;
            t->rows = xrealloc(t->rows, (size_t)t->rcap * sizeof *t->rows);
        }
        t->rows[t->nrows++] = i;
    }
    for (int i = 0; i < l->ntables; i++)
        if (l->list[i]->is_users)
            merge_users(l, l->list[i]);
    if (ddl(l, st, err) < 0)
        return -1;
    Buf discards;
    buf_init(&discards);
    int nd = 0, rc = 0;
    for (int i = 0; i < l->ntables && rc == 0; i++)
        if (l->list[i]->nrows > 0)
            rc = write_table(l, l->list[i], &discards, &nd, st, err);
    if (rc == 0 && nd > 0)
        rc = write_discards(l, &discards, st, err);
    buf_deinit(&discards);
    if (rc < 0)
        return -1;
    l->res->discards = nd;
    buf_reset(s);
    buf_puts(s, "INSERT INTO ");
    put_table(s, w, "pintle_loads");
    buf_puts(s, " (load_id, source_id, destination_id, events, rows) VALUES ($1, $2, $3, $4, $5)");
    char nev[16], nrows[24];
    snprintf(nev, sizeof nev, "%d", in->nevents);
    snprintf(nrows, sizeof nrows, "%lld", (long long)l->res->rows);
    const char *p[] = {in->load_id, in->source_id, in->destination_id, nev, nrows};
    return run(w, s->data, 5, p, NULL, st, err);
}

WhStatus warehouse_load(Warehouse *w, const WhLoad *in, WhResult *res, Err *err)
{
    memset(res, 0, sizeof *res);
    if (wh_connect(w, err) < 0)
        return WH_RETRY;
    WhStatus st = WH_RETRY;
    if (run(w, "BEGIN", 0, NULL, NULL, &st, err) < 0) {
        /* a connection the server closed while idle (restart, idle
         * timeout) is only found out now: one fresh connection */
        PQfinish(w->conn);
        w->conn = NULL;
        if (wh_connect(w, err) < 0 || run(w, "BEGIN", 0, NULL, NULL, &st, err) < 0) {
            if (w->conn)
                PQfinish(w->conn);
            w->conn = NULL;
            return WH_RETRY;
        }
    }
    Load l;
    memset(&l, 0, sizeof l);
    l.w = w;
    l.res = res;
    wh_rows_init(&l.rows);
    hmap_init(&l.tables);
    buf_init(&l.sql);
    buf_init(&l.copy);
    int rc = load_tx(&l, in, &st, err);
    load_free(&l);
    if (rc == 0) {
        Err e2;
        if (run(w, "COMMIT", 0, NULL, NULL, &st, &e2) == 0)
            return WH_OK;
        *err = e2;
    }
    err_prefix(err, "load %s into %s", in->load_id, w->ns);
    if (PQstatus(w->conn) == CONNECTION_OK) {
        PGresult *r = PQexec(w->conn, "ROLLBACK");
        PQclear(r);
    }
    if (PQstatus(w->conn) != CONNECTION_OK) {
        PQfinish(w->conn);
        w->conn = NULL;
        st = WH_RETRY;
    }
    memset(res, 0, sizeof *res);
    return st;
}
