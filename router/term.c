/* A term of the router (see term.h).
 *
 * Mutual exclusion: the stage holds pg_try_advisory_lock('pintle.stage.
 * router') on its only connection, a session lock: a reconnected session
 * (another connection generation) has lost it, and the term ends. A term
 * starts with the cursors and nothing else (rt_retries is never read
 * whole). */
#include "router/term.h"

#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

struct Term {
    Order *order;
    TermStep step;
    unsigned long lock_gen;
};

Term *term_create(Order *o)
{
    Term *t = xcalloc(1, sizeof(*t));
    t->order = o;
    t->step = TERM_LOCK;
    return t;
}

void term_destroy(Term *t)
{
    free(t);
}

TermStep term_step(const Term *t)
{
    return t->step;
}

void term_format(Term *t, StoreStmt *st)
{
    ASSERT(t->step != TERM_UP);
    if (t->step == TERM_LOCK)
        *st = (StoreStmt){.step = "lock",
                          .sql = "SELECT pg_try_advisory_lock(hashtext('pintle.stage.router'))",
                          .nparams = -1};
    else
        *st = (StoreStmt){.step = "load_cursors",
                          .sql = "SELECT partition, last_job_id FROM cursors"
                                 " WHERE stage = 'router' ORDER BY partition",
                          .nparams = -1};
}

static int start(Term *t, const PGresult *res, Err *err)
{
    int n = PQntuples(res);
    if (n == 0)
        return err_set(err, ERR_DB, "no cursors for stage router (run `pintlectl migrate`)");
    int64_t *cur = xcalloc((size_t)n, sizeof(int64_t));
    for (int i = 0; i < n; i++) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < n)
            cur[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    order_start(t->order, cur, n);
    free(cur);
    t->step = TERM_UP;
    return 0;
}

int term_push(Term *t, const PGresult *res, unsigned long conn_gen, bool *standby, Err *err)
{
    *standby = false;
    if (t->step == TERM_LOCK) {
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            *standby = true; /* another router is active */
            return 0;
        }
        t->lock_gen = conn_gen;
        t->step = TERM_CURSORS;
        return 0;
    }
    ASSERT(t->step == TERM_CURSORS);
    return start(t, res, err);
}

bool term_holds(const Term *t, unsigned long conn_gen)
{
    return conn_gen == t->lock_gen;
}

void term_end(Term *t)
{
    t->step = TERM_LOCK;
}
