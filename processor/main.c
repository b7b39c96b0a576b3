/* pintle processor: gw queue -> transformer -> rt / batch_rt queues.
 *
 * main() loads the config and wires: workspace watcher, one db connection
 * (all of the pipeline's SQL runs on it, in order), partition leases (their
 * own connection), the libcurl-multi client for the transformer, hint
 * subscriber (gw) and publishers (rt, batch_rt), /health and /metrics, and
 * the pipeline. Everything runs on one libevent loop; nothing blocks it.
 * SIGTERM/SIGINT: abandon a batch being transformed (its requests are
 * cancelled; uncommitted work is simply read again) or let a database step
 * finish, never past processor.shutdown_timeout_ms; close the pipeline's
 * connection (rolling back whatever was given up), release every lease at
 * once (lease_leave: the other instances take the partitions at their next
 * tick), exit 0. A second signal exits at once. */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/admin.h"
#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/httpc.h"
#include "common/lease.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/metrics.h"
#include "common/svc.h"
#include "common/wsconfig.h"
#include "processor/pipeline.h"

typedef struct App {
    Config cfg;
    struct event_base *base;
    DbPool *pool;
    Lease *lease;
    Httpc *http;
    HintPub *rt_hints, *batch_hints;
    HintSub *gw_hints;
    WsWatcher *ws;
    Metrics *metrics;
    Admin *admin;
    Pipeline *pipeline;
    struct event *sig_term, *sig_int;
    SvcFatal fatal;
    bool stopping;
} App;

static void on_left(void *arg)
{
    App *app = arg;
    event_base_loopexit(app->base, NULL);
}

static void on_stopped(void *arg)
{
    App *app = arg;
    /* the pipeline is done with its connection: closing it rolls back a
     * commit given up at the deadline at once, whose fence holds the lease
     * rows the next owner's takeover must update */
    db_pool_destroy(app->pool);
    app->pool = NULL;
    lease_leave(app->lease, on_left, app);
}

static void on_leases_changed(void *arg)
{
    App *app = arg;
    if (app->pipeline)
        pipeline_leases_changed(app->pipeline);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    App *app = arg;
    if (app->stopping) {
        event_base_loopbreak(app->base);
        return;
    }
    app->stopping = true;
    log_info("draining", "signal=%d", (int)sig);
    pipeline_stop(app->pipeline, on_stopped, app);
}

static void on_hint(void *arg, const char *topic)
{
    App *app = arg;
    pipeline_kick(app->pipeline);
}

static bool ready(void *arg, char *detail, size_t size)
{
    App *app = arg;
    return pipeline_ready(app->pipeline, detail, size);
}

static int fail(const char *what, const Err *err)
{
    char q[1100];
    log_error("startup_failed", "step=%s error=%s", what, log_quote(q, sizeof q, err->msg));
    return 1;
}

static int run(App *app)
{
    Err err;
    app->base = loop_create();
    app->metrics = metrics_create();
    app->ws = ws_watcher_create(app->base, &app->cfg.workspace, NULL, NULL, &err);
    if (app->ws == NULL)
        return fail("workspace", &err);
    if (app->cfg.hints.enabled) {
        app->rt_hints = hint_pub_open(app->cfg.hints.rt, &err);
        if (app->rt_hints == NULL)
            return fail("hints", &err);
        app->batch_hints = hint_pub_open(app->cfg.hints.batch_rt, &err);
        if (app->batch_hints == NULL)
            return fail("hints", &err);
    }
    app->pool = db_pool_create(app->base, &app->cfg.db, "pintle-processor", 1);
    app->fatal.base = app->base;
    db_pool_expect_partitions(app->pool, app->cfg.queue.partitions, svc_on_db_fatal, &app->fatal);
    char admin_address[300];
    snprintf(admin_address, sizeof admin_address, "%s:%d", app->cfg.processor.listen_address,
             app->cfg.processor.admin_port);
    LeaseInfo info = {.admin_address = admin_address, .hint_endpoint = ""};
    app->lease = lease_create(app->base, &app->cfg, "processor", &info, app->metrics,
                              on_leases_changed, app);
    app->http = httpc_create(app->base, app->cfg.processor.max_inflight);
    app->pipeline = pipeline_create(app->base, &app->cfg, app->pool, app->lease, app->http,
                                    app->rt_hints, app->batch_hints, app->ws, app->metrics);
    if (app->cfg.hints.enabled) {
        app->gw_hints = hint_sub_open(app->base, app->cfg.hints.gw, on_hint, app, &err);
        if (app->gw_hints == NULL) {
            char q[1100];
            /* a second processor on the host cannot bind: it polls instead */
            log_warn("hints_unavailable", "endpoint=%s error=%s", app->cfg.hints.gw,
                     log_quote(q, sizeof q, err.msg));
        }
    }
    app->admin = admin_open(app->base, app->cfg.processor.listen_address,
                            app->cfg.processor.admin_port, app->metrics, ready, app, &err);
    if (app->admin == NULL)
        return fail("admin", &err);
    app->sig_term = evsignal_new(app->base, SIGTERM, on_signal, app);
    app->sig_int = evsignal_new(app->base, SIGINT, on_signal, app);
    event_add(app->sig_term, NULL);
    event_add(app->sig_int, NULL);
    log_info("ready", "transformer=%s admin_port=%d", app->cfg.processor.transformer_url,
             app->cfg.processor.admin_port);
    event_base_dispatch(app->base);
    return app->fatal.code;
}

static void teardown(App *app)
{
    pipeline_destroy(app->pipeline);
    admin_close(app->admin);
    hint_sub_close(app->gw_hints);
    httpc_destroy(app->http);
    db_pool_destroy(app->pool);
    lease_destroy(app->lease);
    hint_pub_close(app->rt_hints);
    hint_pub_close(app->batch_hints);
    ws_watcher_destroy(app->ws);
    metrics_destroy(app->metrics);
    if (app->sig_term)
        event_free(app->sig_term);
    if (app->sig_int)
        event_free(app->sig_int);
    if (app->base)
        event_base_free(app->base);
}

int main(int argc, char **argv)
{
    App app;
    memset(&app, 0, sizeof app);
    int rc = svc_start(argc, argv, "processor", &app.cfg);
    if (rc < 0) {
        rc = run(&app);
        teardown(&app);
        log_info("stopped", "code=%d", rc);
    }
    cfg_deinit(&app.cfg);
    return rc;
}
