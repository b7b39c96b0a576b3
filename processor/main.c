/* pintle processor: gw queue -> transformer -> rt / batch_rt queues.
 *
 * main() loads the config and wires: workspace watcher, one db connection
 * (it holds the stage lock, so all of the stage's SQL runs on it, in order),
 * the libcurl-multi client for the transformer, hint subscriber (gw) and
 * publishers (rt, batch_rt), /health and /metrics, and the pipeline.
 * Everything runs on one libevent loop; nothing blocks it. SIGTERM/SIGINT:
 * abandon a batch being transformed (its requests are cancelled; uncommitted
 * work is simply read again) or let a database step finish, never past
 * processor.shutdown_timeout_ms; release the lock by closing the session,
 * exit 0. A second signal exits at once. */
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
    Httpc *http;
    HintPub *rt_hints, *batch_hints;
    HintSub *gw_hints;
    DbPool *hint_pool; /* lookup of the routers' and batchrouters' endpoints */
    WsWatcher *ws;
    Metrics *metrics;
    Admin *admin;
    Pipeline *pipeline;
    struct event *sig_term, *sig_int;
    SvcFatal fatal;
    bool stopping;
} App;

static void on_stopped(void *arg)
{
    App *app = arg;
    event_base_loopexit(app->base, NULL);
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
        /* The stage's own connection is not shared (the pipeline treats it
         * as its own), so the lookup of the consumers' endpoints gets one. */
        const HintsConfig *h = &app->cfg.hints;
        if (h->discovery_interval_ms > 0)
            app->hint_pool = db_pool_create(app->base, &app->cfg.db, "pintle-processor-hints", 1);
        app->rt_hints = hint_pub_open(app->base, "router", h->router_endpoints, app->hint_pool,
                                      h->discovery_interval_ms, &err);
        if (app->rt_hints == NULL)
            return fail("hints", &err);
        app->batch_hints = hint_pub_open(app->base, "batchrouter", h->batchrouter_endpoints,
                                         app->hint_pool, h->discovery_interval_ms, &err);
        if (app->batch_hints == NULL)
            return fail("hints", &err);
    }
    app->pool = db_pool_create(app->base, &app->cfg.db, "pintle-processor", 1);
    app->fatal.base = app->base;
    db_pool_expect_partitions(app->pool, app->cfg.queue.partitions, svc_on_db_fatal, &app->fatal);
    app->http = httpc_create(app->base, app->cfg.processor.max_inflight);
    app->pipeline = pipeline_create(app->base, &app->cfg, app->pool, app->http, app->rt_hints,
                                    app->batch_hints, app->ws, app->metrics);
    if (app->cfg.hints.enabled) {
        /* hint_sub_endpoint(app->gw_hints) is this instance's
         * LeaseInfo.hint_endpoint: producers find it in the instances table */
        app->gw_hints = hint_sub_open(app->base, app->cfg.hints.bind, app->cfg.hints.advertise,
                                      "processor", on_hint, app, &err);
        if (app->gw_hints == NULL) {
            char q[1100];
            /* the endpoint is taken (a fixed one shared by two instances): poll instead */
            log_warn("hints_unavailable", "error=%s", log_quote(q, sizeof q, err.msg));
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
    log_info("ready", "transformer=%s admin_port=%d hint_endpoint=%s",
             app->cfg.processor.transformer_url, app->cfg.processor.admin_port,
             hint_sub_endpoint(app->gw_hints));
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
    hint_pub_close(app->rt_hints);
    hint_pub_close(app->batch_hints);
    db_pool_destroy(app->hint_pool);
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
