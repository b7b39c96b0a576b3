/* The skeleton of a consuming service (see stage.h). */
#include "common/stage.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/admin.h"
#include "common/hint.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/svc.h"

/* Time a graceful stop leaves for freeing the leases after the stage stopped. */
#define LEAVE_MS 1000

typedef struct Stage {
    const StageOps *ops;
    Config cfg;
    StageSettings set;
    StageEnv env;
    struct event_base *base;
    DbPool *pool;
    Metrics *metrics;
    Lease *lease;
    Ops *opstate; /* mode, pauses, queue statistics */
    HintSub *hints;
    Admin *admin;
    void *work;
    struct event *sig_term, *sig_int, *deadline;
    struct event *exit_ev;
    SvcFatal fatal;
    bool stopping;
    bool leaving; /* lease_leave was called */
} Stage;

static void on_left(void *arg)
{
    Stage *s = arg;
    event_base_loopexit(s->base, NULL);
}

static void on_recorded(void *arg)
{
    Stage *s = arg;
    lease_leave(s->lease, on_left, s);
}

static void on_stopped(void *arg)
{
    Stage *s = arg;
    ops_leave(s->opstate, on_recorded, s);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    Stage *s = arg;
    log_warn("shutdown_timeout", "action=exit shutdown_timeout_ms=%d", s->set.shutdown_timeout_ms);
    event_base_loopexit(s->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    Stage *s = arg;
    if (s->stopping) {
        event_base_loopbreak(s->base);
        return;
    }
    s->stopping = true;
    int ms = s->set.shutdown_timeout_ms;
    log_info("draining", "signal=%d shutdown_timeout_ms=%d", (int)sig, ms);
    lease_drain(s->lease); /* takes nothing more; others take what it gives back */
    int hard = ms + LEAVE_MS;
    struct timeval tv = {hard / 1000, (hard % 1000) * 1000};
    s->deadline = evtimer_new(s->base, on_deadline, s);
    evtimer_add(s->deadline, &tv);
    s->ops->stop(s->work, ms, on_stopped, s);
}

static void on_hint(void *arg, const char *topic)
{
    Stage *s = arg;
    if (s->work)
        s->ops->kick(s->work);
}

static void on_leases(void *arg)
{
    Stage *s = arg;
    if (s->work)
        s->ops->leases_changed(s->work);
}

/* A mode change or a pause: work may start (back to normal) or stop. */
static void on_ops(void *arg)
{
    Stage *s = arg;
    if (s->work)
        s->ops->kick(s->work);
}

/* The stage's own detail, with the mode added: degraded is healthy (the
 * process is fine and leased; it forwards nothing on purpose). */
static bool ready(void *arg, char *detail, size_t size)
{
    Stage *s = arg;
    bool ok = s->ops->ready(s->work, detail, size);
    size_t n = strlen(detail);
    if (n > 0 && detail[n - 1] == '}') {
        char q[300];
        const char *why = ops_reason(s->opstate);
        size_t k = 0;
        for (const char *c = why; *c && k + 2 < sizeof q; c++)
            if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20)
                q[k++] = *c;
        q[k] = '\0';
        snprintf(detail + n - 1, size - (n - 1), "%s\"mode\":\"%s\"%s%s%s}", n > 2 ? "," : "",
                 ops_mode(s->opstate), ops_degraded(s->opstate) ? ",\"mode_reason\":\"" : "",
                 ops_degraded(s->opstate) ? q : "", ops_degraded(s->opstate) ? "\"" : "");
    }
    return ok;
}

static int fail(const char *what, const Err *err)
{
    char q[1100];
    log_error("startup_failed", "step=%s error=%s", what, log_quote(q, sizeof q, err->msg));
    return 1;
}

static int run(Stage *s)
{
    Err err;
    s->base = loop_create();
    s->metrics = metrics_create();
    char app[64];
    snprintf(app, sizeof app, "pintle-%s", s->ops->name);
    s->pool = db_pool_create(s->base, &s->cfg.db, app, 1);
    s->fatal.base = s->base;
    db_pool_expect_partitions(s->pool, s->cfg.queue.partitions, svc_on_db_fatal, &s->fatal);
    if (s->cfg.hints.enabled) {
        /* this instance's own endpoint (hints.bind for the stage), which the
         * lease heartbeat advertises in the instances table for producers */
        s->hints = hint_sub_open(s->base, s->cfg.hints.bind, s->cfg.hints.advertise, s->ops->name,
                                 on_hint, s, &err);
        if (s->hints == NULL) {
            char q[1100];
            log_warn("hints_unavailable", "error=%s action=poll", log_quote(q, sizeof q, err.msg));
        }
    }
    char admin_address[300];
    snprintf(admin_address, sizeof admin_address, "%s:%d", s->set.listen_address,
             s->set.admin_port);
    LeaseInfo info = {admin_address, hint_sub_endpoint(s->hints)};
    s->lease = lease_create(s->base, &s->cfg, s->ops->name, &info, s->metrics, on_leases, s);
    s->opstate = ops_create(s->base, &s->cfg, s->ops->name, s->lease, s->metrics, on_ops, s);
    s->env = (StageEnv){s->base, &s->cfg, s->pool, s->metrics, s->lease, s->opstate};
    s->work = s->ops->create(&s->env, &err);
    if (s->work == NULL)
        return fail(s->ops->name, &err);
    s->admin =
        admin_open(s->base, s->set.listen_address, s->set.admin_port, s->metrics, ready, s, &err);
    if (s->admin == NULL)
        return fail("admin", &err);
    s->sig_term = evsignal_new(s->base, SIGTERM, on_signal, s);
    s->sig_int = evsignal_new(s->base, SIGINT, on_signal, s);
    event_add(s->sig_term, NULL);
    event_add(s->sig_int, NULL);
    char extra[512] = "";
    if (s->ops->describe)
        s->ops->describe(s->work, extra, sizeof extra);
    log_info("ready", "admin_port=%d instance=%s hint_endpoint=%s%s%s", s->set.admin_port,
             lease_owner(s->lease), hint_sub_endpoint(s->hints), extra[0] ? " " : "", extra);
    event_base_dispatch(s->base);
    return s->fatal.code;
}

static void teardown(Stage *s)
{
    if (s->work)
        s->ops->destroy(s->work);
    admin_close(s->admin);
    hint_sub_close(s->hints);
    ops_destroy(s->opstate);
    lease_destroy(s->lease);
    db_pool_destroy(s->pool);
    metrics_destroy(s->metrics);
    if (s->sig_term)
        event_free(s->sig_term);
    if (s->sig_int)
        event_free(s->sig_int);
    if (s->deadline)
        event_free(s->deadline);
    if (s->exit_ev)
        event_free(s->exit_ev);
    if (s->base)
        event_base_free(s->base);
}

int stage_main(int argc, char **argv, const StageOps *ops)
{
    Stage s;
    memset(&s, 0, sizeof s);
    s.ops = ops;
    int rc = svc_start(argc, argv, ops->name, &s.cfg);
    if (rc < 0) {
        ops->settings(&s.cfg, &s.set);
        rc = run(&s);
        teardown(&s);
        log_info("stopped", "code=%d", rc);
    }
    cfg_deinit(&s.cfg);
    return rc;
}
