/* A term of the router: the stage lock (pg_try_advisory_lock on the
 * engine's one connection) and the partition cursors read under it, which
 * start the order state. Owns nothing but the term's facts (which
 * connection session holds the lock); borrows the order state. The engine
 * sends what term_format gives and ends the term on any database error. */
#ifndef ROUTER_TERM_H
#define ROUTER_TERM_H

#include <stdbool.h>

#include <libpq-fe.h>

#include "common/err.h"
#include "router/order.h"
#include "router/store.h"

typedef enum TermStep {
    TERM_LOCK,    /* take the stage lock */
    TERM_CURSORS, /* read the cursors */
    TERM_UP       /* started: claims, loads and flushes may run */
} TermStep;

typedef struct Term Term;

Term *term_create(Order *o);
void term_destroy(Term *t);
TermStep term_step(const Term *t);
/* Formats the statement of the current step (TERM_LOCK or TERM_CURSORS). */
void term_format(Term *t, StoreStmt *st);
/* The result of that statement, on the connection of generation conn_gen.
 * Returns 0 (the next step, or TERM_LOCK again with *standby set when
 * another router holds the lock), or fails with err. On TERM_UP the order
 * state has started with the stored cursors. */
MUST_CHECK int term_push(Term *t, const PGresult *res, unsigned long conn_gen, bool *standby,
                         Err *err);
/* Whether the lock is still held: the connection is the session that took it. */
bool term_holds(const Term *t, unsigned long conn_gen);
/* The term ended (database error): the next one starts with the lock. */
void term_end(Term *t);

#endif
