/* pintle router: delivers rt jobs to HTTP destinations.
 *
 * The service skeleton (common/stage.c) owns the loop, the stage's db
 * connection, leases, rt hints, /health and /metrics and signals; this file
 * adds the libcurl-multi client (keep-alive connections, bounded per host)
 * and the engine. SIGTERM/SIGINT: stop starting deliveries, wait for the
 * ones in flight (cancelled shortly before router.shutdown_timeout_ms, not
 * delivered as far as the database knows), flush their outcomes, free the
 * leases, exit 0. */
#include <stdio.h>
#include <stdlib.h>

#include "common/httpc.h"
#include "common/stage.h"
#include "common/xalloc.h"
#include "router/engine.h"

typedef struct Router {
    Httpc *http;
    Engine *engine;
} Router;

static void settings(const Config *cfg, StageSettings *out)
{
    *out = (StageSettings){cfg->router.listen_address, cfg->router.admin_port,
                           cfg->router.shutdown_timeout_ms};
}

static void *create(const StageEnv *env, Err *err)
{
    Router *r = xcalloc(1, sizeof *r);
    r->http = httpc_create(env->base, env->cfg->router.max_concurrency_per_destination);
    r->engine = engine_create(env->base, env->cfg, env->pool, env->lease, r->http, env->metrics);
    engine_set_ops(r->engine, env->ops);
    return r;
}

static void destroy(void *work)
{
    Router *r = work;
    engine_destroy(r->engine);
    httpc_destroy(r->http);
    free(r);
}

static void kick(void *work)
{
    Router *r = work;
    engine_kick(r->engine);
}

static void leases_changed(void *work)
{
    Router *r = work;
    engine_leases_changed(r->engine);
}

/* Deliveries in flight may finish until shortly before the deadline; then
 * they are cancelled and what is durable is flushed, in the time left. */
static void stop(void *work, int deadline_ms, void (*done)(void *), void *arg)
{
    Router *r = work;
    int flush_ms = deadline_ms / 4 < 1000 ? deadline_ms / 4 : 1000;
    engine_stop(r->engine, deadline_ms - flush_ms, done, arg);
}

static bool ready(void *work, char *detail, size_t size)
{
    Router *r = work;
    return engine_ready(r->engine, detail, size);
}

int main(int argc, char **argv)
{
    static const StageOps ops = {"router",       settings, create, destroy, kick,
                                 leases_changed, stop,     ready,  NULL};
    return stage_main(argc, argv, &ops);
}
