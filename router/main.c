/* pintle router: delivers rt jobs to HTTP destinations.
 *
 * main() loads the config and wires: one db connection (it holds the stage
 * lock; all of the router's SQL runs on it, in order), the libcurl-multi
 * client (keep-alive connections, bounded per host), the rt hint
 * subscriber, /health and /metrics, and the engine. One libevent loop;
 * nothing blocks it. SIGTERM/SIGINT: stop starting deliveries, wait for the
 * ones in flight (cancelled shortly before router.shutdown_timeout_ms, not
 * delivered as far as the database knows), flush their outcomes, exit 0. */
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
#include "router/engine.h"

typedef struct App {
    Config cfg;
    struct event_base *base;
    DbPool *pool;
    Httpc *http;
    HintSub *rt_hints;
    Metrics *metrics;
    Admin *admin;
    Engine *engine;
    struct event *sig_term, *sig_int, *deadline;
    SvcFatal fatal;
    bool stopping;
} App;

static void on_stopped(void *arg)
{
    App *app = arg;
    event_base_loopexit(app->base, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    App *app = arg;
    log_warn("shutdown_timeout", "action=exit");
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
    int ms = app->cfg.router.shutdown_timeout_ms;
    log_info("draining", "signal=%d shutdown_timeout_ms=%d", (int)sig, ms);
    /* Deliveries in flight may finish until shortly before the deadline;
     * then they are cancelled and what is durable is flushed, in the time
     * left. The hard deadline covers a database that does not answer. */
    int flush_ms = ms / 4 < 1000 ? ms / 4 : 1000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    app->deadline = evtimer_new(app->base, on_deadline, app);
    evtimer_add(app->deadline, &tv);
    engine_stop(app->engine, ms - flush_ms, on_stopped, app);
}

static void on_hint(void *arg, const char *topic)
{
    App *app = arg;
    engine_kick(app->engine);
}

static bool ready(void *arg, char *detail, size_t size)
{
    App *app = arg;
    return engine_ready(app->engine, detail, size);
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
    app->pool = db_pool_create(app->base, &app->cfg.db, "pintle-router", 1);
    app->fatal.base = app->base;
    db_pool_expect_partitions(app->pool, app->cfg.queue.partitions, svc_on_db_fatal, &app->fatal);
    app->http = httpc_create(app->base, app->cfg.router.max_concurrency_per_destination);
    app->engine = engine_create(app->base, &app->cfg, app->pool, app->http, app->metrics);
    if (app->cfg.hints.enabled) {
        /* hint_sub_endpoint(app->rt_hints) is this instance's
         * LeaseInfo.hint_endpoint: producers find it in the instances table */
        app->rt_hints = hint_sub_open(app->base, app->cfg.hints.bind, app->cfg.hints.advertise,
                                      "router", on_hint, app, &err);
        if (app->rt_hints == NULL) {
            char q[1100];
            /* the endpoint is taken (a fixed one shared by two instances): poll instead */
            log_warn("hints_unavailable", "error=%s", log_quote(q, sizeof q, err.msg));
        }
    }
    app->admin = admin_open(app->base, app->cfg.router.listen_address, app->cfg.router.admin_port,
                            app->metrics, ready, app, &err);
    if (app->admin == NULL)
        return fail("admin", &err);
    app->sig_term = evsignal_new(app->base, SIGTERM, on_signal, app);
    app->sig_int = evsignal_new(app->base, SIGINT, on_signal, app);
    event_add(app->sig_term, NULL);
    event_add(app->sig_int, NULL);
    log_info("ready", "admin_port=%d max_concurrency_per_destination=%d hint_endpoint=%s",
             app->cfg.router.admin_port, app->cfg.router.max_concurrency_per_destination,
             hint_sub_endpoint(app->rt_hints));
    event_base_dispatch(app->base);
    return app->fatal.code;
}

static void teardown(App *app)
{
    engine_destroy(app->engine);
    admin_close(app->admin);
    hint_sub_close(app->rt_hints);
    httpc_destroy(app->http);
    db_pool_destroy(app->pool);
    metrics_destroy(app->metrics);
    if (app->sig_term)
        event_free(app->sig_term);
    if (app->sig_int)
        event_free(app->sig_int);
    if (app->deadline)
        event_free(app->deadline);
    if (app->base)
        event_base_free(app->base);
}

int main(int argc, char **argv)
{
    App app;
    memset(&app, 0, sizeof app);
    int rc = svc_start(argc, argv, "router", &app.cfg);
    if (rc < 0) {
        rc = run(&app);
        teardown(&app);
        log_info("stopped", "code=%d", rc);
    }
    cfg_deinit(&app.cfg);
    return rc;
}
