#include "common/db.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/xalloc.h"

typedef enum ConnState { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_RESERVED } ConnState;

struct DbConn {
    DbPool *pool;
    int index;
    PGconn *pg;
    ConnState state;
    struct event *rd;
    struct event *wr;
    struct event *timer; /* reconnect backoff and connect polling */
    int backoff_ms;
    unsigned long generation; /* incremented on every successful connect */
    /* current operation */
    DbDoneCb cb;
    void *cb_arg;
    const DbCopy *copies;
    int ncopies;
    int copy_index;
    size_t copy_off;
    bool in_copy;
    bool rolling_back;
    PGresult *last;
    Err err;
    bool failed;
    bool checking; /* connected, schema check running: not usable yet */
};

struct DbPool {
    struct event_base *base;
    char *dsn;
    char *options;
    char *app;
    char timeout_s[16];
    char user_timeout_ms[16], ka_idle_s[16], ka_interval_s[16];
    int reconnect_max_ms;
    int size;
    DbConn *conns;
    void (*idle_cb)(void *);
    void *idle_arg;
    struct event *idle_ev;
    int expect_partitions; /* 0: no schema check */
    DbFatalCb fatal_cb;
    void *fatal_arg;
    bool warned_schema;
};

static void conn_start_connect(DbConn *c);
static void conn_drive(DbConn *c);
static void start_check(DbConn *c);

static void conn_close(DbConn *c)
{
    if (c->rd) {
        event_free(c->rd);
        c->rd = NULL;
    }
    if (c->wr) {
        event_free(c->wr);
        c->wr = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = CONN_DOWN;
}

static void schedule_reconnect(DbConn *c)
{
    conn_close(c);
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 100;
    if (c->backoff_ms > c->pool->reconnect_max_ms)
        c->backoff_ms = c->pool->reconnect_max_ms;
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void notify_idle(DbPool *p)
{
    if (p->idle_cb)
        event_active(p->idle_ev, 0, 0);
}

static void idle_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    DbPool *p = arg;
    if (p->idle_cb)
        p->idle_cb(p->idle_arg);
}

static void finish_op(DbConn *c)
{
    DbDoneCb cb = c->cb;
    void *arg = c->cb_arg;
    PGresult *last = c->last;
    bool failed = c->failed;
    Err err = c->err;
    c->cb = NULL;
    c->last = NULL;
    c->copies = NULL;
    c->ncopies = 0;
    c->failed = false;
    bool lost = c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD;
    if (lost)
        c->state = CONN_DOWN;
    else
        c->state = CONN_RESERVED;
    if (cb)
        cb(arg, c, last, failed ? &err : NULL);
    PQclear(last);
    if (lost) {
        if (c->pg != NULL || c->state == CONN_DOWN)
            schedule_reconnect(c);
        notify_idle(c->pool);
        return;
    }
    if (c->state == CONN_RESERVED) {
        /* The callback did not start another operation: give it back, but
         * never with a transaction left open by a failed operation. */
        PGTransactionStatusType ts = PQtransactionStatus(c->pg);
        if (ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS) {
            if (PQsendQuery(c->pg, "ROLLBACK") == 1) {
                c->state = CONN_BUSY;
                c->rolling_back = true;
                conn_drive(c);
                return;
            }
            schedule_reconnect(c);
            return;
        }
        c->state = CONN_IDLE;
        notify_idle(c->pool);
    }
}

static void fail_conn(DbConn *c, const char *what)
{
    if (!c->failed) {
        c->failed = true;
        err_set(&c->err, ERR_DB, "%s: %s", what, c->pg ? PQerrorMessage(c->pg) : "no connection");
        /* libpq messages end with a newline; keep log lines single */
        size_t n = strlen(c->err.msg);
        while (n > 0 && (c->err.msg[n - 1] == '\n' || c->err.msg[n - 1] == ' '))
            c->err.msg[--n] = '\0';
    }
    if (c->rolling_back) {
        c->rolling_back = false;
        schedule_reconnect(c);
        return;
    }
    conn_close(c);
    finish_op(c);
}

static void arm_write(DbConn *c)
{
    event_add(c->wr, NULL);
}

/* Feeds COPY data; returns 1 when all of the current copy is queued and
 * PQputCopyEnd sent, 0 when waiting for the socket, -1 on error. */
static int feed_copy(DbConn *c)
{
    const DbCopy *cp = c->copy_index < c->ncopies ? &c->copies[c->copy_index] : NULL;
    while (cp != NULL && c->copy_off < cp->len) {
        size_t n = cp->len - c->copy_off;
        if (n > 65536)
            n = 65536;
        int r = PQputCopyData(c->pg, cp->data + c->copy_off, (int)n);
        if (r < 0)
            return -1;
        if (r == 0) {
            arm_write(c);
            return 0;
        }
        c->copy_off += n;
    }
    int r = PQputCopyEnd(c->pg, cp == NULL ? "no COPY data supplied for this statement" : NULL);
    if (r < 0)
        return -1;
    if (r == 0) {
        arm_write(c);
        return 0;
    }
    c->in_copy = false;
    c->copy_index++;
    c->copy_off = 0;
    return 1;
}

static void conn_drive(DbConn *c)
{
    for (;;) {
        if (c->in_copy) {
            int r = feed_copy(c);
            if (r < 0) {
                fail_conn(c, "could not send COPY data");
                return;
            }
            if (r == 0)
                return;
        }
        int f = PQflush(c->pg);
        if (f < 0) {
            fail_conn(c, "could not send to the database");
            return;
        }
        if (f == 1)
            arm_write(c);
        if (PQisBusy(c->pg))
            return;
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            if (c->rolling_back) {
                c->rolling_back = false;
                c->state = CONN_IDLE;
                notify_idle(c->pool);
                return;
            }
            finish_op(c);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (c->rolling_back) {
            PQclear(res);
            continue;
        }
        if (st == PGRES_COPY_IN) {
            PQclear(res);
            c->in_copy = true;
            continue;
        }
        if (st == PGRES_TUPLES_OK) {
            PQclear(c->last);
            c->last = res;
            continue;
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_EMPTY_QUERY && !c->failed) {
            c->failed = true;
            const char *m = PQresultErrorMessage(res);
            const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            err_set(&c->err, ERR_DB, "%s%s%s", m && m[0] ? m : PQresStatus(st),
                    code ? " sqlstate=" : "", code ? code : "");
            char *nl;
            while ((nl = strchr(c->err.msg, '\n')) != NULL)
                *nl = ' ';
        }
        PQclear(res);
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    DbConn *c = arg;
    if (c->state != CONN_BUSY) {
        /* Idle connection became readable: a notice or the server closing. */
        if (PQconsumeInput(c->pg) == 0 || PQstatus(c->pg) == CONNECTION_BAD) {
            log_warn("db_connection_lost", "conn=%d", c->index);
            schedule_reconnect(c);
        }
        return;
    }
    if (PQconsumeInput(c->pg) == 0) {
        fail_conn(c, "could not read from the database");
        return;
    }
    conn_drive(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    DbConn *c = arg;
    if (c->state == CONN_BUSY)
        conn_drive(c);
}

static void connect_poll(DbConn *c, PostgresPollingStatusType st);

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
    DbConn *c = arg;
    if (what & EV_TIMEOUT) {
        log_warn("db_connect_failed", "conn=%d reason=timeout", c->index);
        schedule_reconnect(c);
        return;
    }
    connect_poll(c, PQconnectPoll(c->pg));
}

static void connect_poll(DbConn *c, PostgresPollingStatusType st)
{
    if (st == PGRES_POLLING_FAILED) {
        char msg[512];
        const char *m = PQerrorMessage(c->pg);
        log_warn("db_connect_failed", "conn=%d backoff_ms=%d error=%s", c->index,
                 c->backoff_ms ? c->backoff_ms * 2 : 100, log_quote(msg, sizeof msg, m));
        schedule_reconnect(c);
        return;
    }
    if (st == PGRES_POLLING_OK) {
        PQsetnonblocking(c->pg, 1);
        int fd = PQsocket(c->pg);
        c->rd = event_new(c->pool->base, fd, EV_READ | EV_PERSIST, on_read, c);
        c->wr = event_new(c->pool->base, fd, EV_WRITE, on_write, c);
        event_add(c->rd, NULL);
        c->state = CONN_IDLE;
        c->generation++;
        if (c->backoff_ms > 0)
            log_info("db_connected", "conn=%d", c->index);
        if (c->pool->expect_partitions > 0) {
            start_check(c);
            return;
        }
        c->backoff_ms = 0;
        notify_idle(c->pool);
        return;
    }
    short ev = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
    int ms = c->pool->reconnect_max_ms < 5000 ? 5000 : c->pool->reconnect_max_ms;
    struct timeval tv = {ms / 1000, 0};
    if (event_base_once(c->pool->base, PQsocket(c->pg), ev, on_connect_io, c, &tv) < 0)
        schedule_reconnect(c);
}

static void conn_start_connect(DbConn *c)
{
    DbPool *p = c->pool;
    /* dead-peer detection first, so a DSN that sets its own keeps them */
    const char *kw[] = {"keepalives",         "keepalives_idle", "keepalives_interval",
                        "keepalives_count",   "tcp_user_timeout", "dbname",
                        "options",            "application_name", "connect_timeout",
                        NULL};
    const char *vals[] = {"1",     p->ka_idle_s, p->ka_interval_s, "3", p->user_timeout_ms, p->dsn,
                          p->options, p->app,    p->timeout_s,     NULL};
    c->pg = PQconnectStartParams(kw, vals, 1);
    c->state = CONN_CONNECTING;
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        log_warn("db_connect_failed", "conn=%d reason=start", c->index);
        schedule_reconnect(c);
        return;
    }
    connect_poll(c, PGRES_POLLING_WRITING);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    conn_start_connect(arg);
}

/* The schema check of a new connection: meta.partitions must equal what
 * this process hashes events into, else rows land in partitions that no
 * cursor reads (or are read by the wrong consumer). */
static void on_checked(void *arg, DbConn *c, PGresult *res, const Err *err)
{
    DbPool *p = c->pool;
    c->checking = false;
    if (err != NULL || res == NULL || PQntuples(res) != 1) {
        if (!p->warned_schema) {
            char q[1100];
            log_warn("db_schema_unavailable", "conn=%d error=%s", c->index,
                     log_quote(q, sizeof q,
                               err ? err->msg
                                   : "no partitions row in meta (run `pintlectl migrate`)"));
            p->warned_schema = true;
        }
        if (c->pg != NULL) /* else the connection was lost and finish_op reconnects */
            schedule_reconnect(c);
        return;
    }
    int have = atoi(PQgetvalue(res, 0, 0));
    if (have != p->expect_partitions) {
        Err e;
        err_set(&e, ERR_INVALID,
                "queue.partitions is %d but the jobs schema was installed with %d partitions;"
                " set queue.partitions = %d",
                p->expect_partitions, have, have);
        conn_close(c);
        if (p->fatal_cb)
            p->fatal_cb(p->fatal_arg, &e);
        return;
    }
    p->warned_schema = false;
    c->backoff_ms = 0;
    /* finish_op makes the connection idle and notifies the pool */
}

static void start_check(DbConn *c)
{
    c->state = CONN_RESERVED;
    c->checking = true;
    if (db_exec(c, "SELECT value FROM meta WHERE key = 'partitions'", -1, NULL, NULL, 0,
                on_checked, c) < 0)
        c->checking = false; /* db_exec scheduled a reconnect */
}

void db_pool_expect_partitions(DbPool *p, int partitions, DbFatalCb fatal, void *arg)
{
    p->expect_partitions = partitions;
    p->fatal_cb = fatal;
    p->fatal_arg = arg;
}

DbPool *db_pool_create(struct event_base *base, const DbConfig *cfg, const char *app, int size)
{
    return db_pool_create_with(base, cfg, app, size, NULL);
}

DbPool *db_pool_create_with(struct event_base *base, const DbConfig *cfg, const char *app,
                            int size, const char *settings)
{
    DbPool *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->dsn = xstrdup(cfg->dsn);
    p->options = xasprintf("-c search_path=%s,public -c client_min_messages=warning%s%s",
                           cfg->schema, settings ? " " : "", settings ? settings : "");
    p->app = xstrdup(app);
    snprintf(p->timeout_s, sizeof(p->timeout_s), "%d", (cfg->connect_timeout_ms + 999) / 1000);
    p->reconnect_max_ms = cfg->reconnect_max_ms;
    /* a peer that vanished (half-open TCP) is noticed within about dead_peer_ms:
     * unacknowledged sends by tcp_user_timeout, a silent idle link by three
     * keepalive probes */
    int dead_ms = cfg->dead_peer_ms;
    snprintf(p->user_timeout_ms, sizeof(p->user_timeout_ms), "%d", dead_ms);
    snprintf(p->ka_idle_s, sizeof(p->ka_idle_s), "%d", dead_ms / 2000 > 0 ? dead_ms / 2000 : 1);
    snprintf(p->ka_interval_s, sizeof(p->ka_interval_s), "%d",
             dead_ms / 6000 > 0 ? dead_ms / 6000 : 1);
    p->size = size;
    p->conns = xcalloc((size_t)size, sizeof(DbConn));
    p->idle_ev = event_new(base, -1, 0, idle_ev_cb, p);
    for (int i = 0; i < size; i++) {
        DbConn *c = &p->conns[i];
        c->pool = p;
        c->index = i;
        c->timer = evtimer_new(base, on_timer, c);
        conn_start_connect(c);
    }
    return p;
}

void db_pool_destroy(DbPool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->size; i++) {
        conn_close(&p->conns[i]);
        PQclear(p->conns[i].last);
        event_free(p->conns[i].timer);
    }
    event_free(p->idle_ev);
    free(p->conns);
    free(p->dsn);
    free(p->options);
    free(p->app);
    free(p);
}

void db_pool_set_idle_cb(DbPool *p, void (*cb)(void *), void *arg)
{
    p->idle_cb = cb;
    p->idle_arg = arg;
}

DbConn *db_pool_acquire(DbPool *p)
{
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state == CONN_IDLE) {
            p->conns[i].state = CONN_RESERVED;
            return &p->conns[i];
        }
    return NULL;
}

void db_conn_release(DbConn *c)
{
    if (c->state == CONN_RESERVED) {
        c->state = CONN_IDLE;
        notify_idle(c->pool);
    }
}

int db_pool_connected(const DbPool *p)
{
    int n = 0;
    for (int i = 0; i < p->size; i++)
        n += p->conns[i].state >= CONN_IDLE && !p->conns[i].checking;
    return n;
}

int db_pool_idle(const DbPool *p)
{
    int n = 0;
    for (int i = 0; i < p->size; i++)
        n += p->conns[i].state == CONN_IDLE;
    return n;
}

int db_exec(DbConn *c, const char *sql, int nparams, const char *const *params,
            const DbCopy *copies, int ncopies, DbDoneCb cb, void *arg)
{
    if (c->state != CONN_RESERVED)
        return ERR_DB;
    int ok = nparams >= 0 ? PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0)
                          : PQsendQuery(c->pg, sql);
    if (ok != 1) {
        Err e;
        err_set(&e, ERR_DB, "could not send query: %s", PQerrorMessage(c->pg));
        schedule_reconnect(c);
        return e.code;
    }
    c->state = CONN_BUSY;
    c->cb = cb;
    c->cb_arg = arg;
    c->copies = copies;
    c->ncopies = ncopies;
    c->copy_index = 0;
    c->copy_off = 0;
    c->in_copy = false;
    c->failed = false;
    conn_drive(c);
    return 0;
}

PGconn *db_connect_blocking(const DbConfig *cfg, const char *app, Err *err)
{
    char *options = xasprintf("-c search_path=%s,public", cfg->schema);
    const char *kw[] = {"dbname", "options", "application_name", NULL};
    const char *vals[] = {cfg->dsn, options, app, NULL};
    PGconn *pg = PQconnectdbParams(kw, vals, 1);
    free(options);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        err_set(err, ERR_DB, "could not connect to the database: %s",
                pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

unsigned long db_conn_generation(const DbConn *c)
{
    return c->generation;
}
