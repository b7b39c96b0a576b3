/* Async PostgreSQL on the libevent loop: a small pool of libpq connections.
 * Owns the PGconn objects, their socket events and reconnect timers. Does not
 * own the SQL, parameters or COPY data passed to db_exec (they must stay valid
 * until the callback runs). Used by every component; never blocks the loop
 * (connects with PQconnectStart/Poll, queries with PQsend*, nonblocking COPY).
 *
 * A connection runs one operation at a time. An operation is one query string
 * (simple protocol, several statements allowed, including COPY FROM STDIN
 * fed from the given buffers in order) or one parameterised statement. Its
 * callback runs once with the last row-returning result, or with an error. If
 * an operation fails inside a transaction, the connection rolls it back
 * before it is reused; if the connection is lost, it reconnects with backoff. */
#ifndef COMMON_DB_H
#define COMMON_DB_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "common/cfg.h"
#include "common/err.h"

struct event_base;

typedef struct DbPool DbPool;
typedef struct DbConn DbConn;

typedef struct DbCopy {
    const char *data;
    size_t len;
} DbCopy;

/* res: the last result that returned rows (borrowed, cleared after the
 * callback returns), or NULL. err: NULL on success. The connection is still
 * reserved during the callback, which may start the next operation on it. */
typedef void (*DbDoneCb)(void *arg, DbConn *conn, PGresult *res, const Err *err);

/* Creates the pool and starts connecting; never fails (connections that
 * cannot be made are retried). app is the application_name. */
DbPool *db_pool_create(struct event_base *base, const DbConfig *cfg, const char *app, int size);
/* The same, with more server settings for every connection of the pool
 * (libpq "options" syntax, e.g. "-c lock_timeout=1000"). */
DbPool *db_pool_create_with(struct event_base *base, const DbConfig *cfg, const char *app,
                            int size, const char *settings);
void db_pool_destroy(DbPool *pool);
typedef void (*DbFatalCb)(void *arg, const Err *err);
/* Checks every new connection (before it counts as connected or can be
 * acquired) against the jobs schema: meta.partitions must equal
 * partitions. A schema that is not there yet (not migrated) is retried with
 * the reconnect backoff; a mismatch closes the connection and calls fatal,
 * which should stop the process (a configuration error). Call right after
 * db_pool_create, before the loop runs. */
void db_pool_expect_partitions(DbPool *pool, int partitions, DbFatalCb fatal, void *arg);
/* Called (from the loop) whenever a connection becomes idle or connects. */
void db_pool_set_idle_cb(DbPool *pool, void (*cb)(void *arg), void *arg);
/* Reserves an idle connection for the caller; NULL if none is idle. The
 * reservation ends when an operation's callback returns without starting
 * another one, or with db_conn_release. */
DbConn *db_pool_acquire(DbPool *pool);
void db_conn_release(DbConn *conn);
/* Connections that are up (and passed the schema check, if any). */
int db_pool_connected(const DbPool *pool);
int db_pool_idle(const DbPool *pool);

/* Starts sql on a reserved connection. With nparams >= 0 it is one
 * statement sent with parameters (text format); with nparams < 0 a simple
 * query string. copies feed successive COPY FROM STDIN statements. */
MUST_CHECK int db_exec(DbConn *conn, const char *sql, int nparams, const char *const *params,
                       const DbCopy *copies, int ncopies, DbDoneCb cb, void *arg);

/* Changes whenever the connection was re-established: session state such as
 * advisory locks held by the previous session is gone. */
unsigned long db_conn_generation(const DbConn *conn);

/* Blocking connect for command-line tools and tests (never on a service loop). */
PGconn *db_connect_blocking(const DbConfig *cfg, const char *app, Err *err);

#endif
