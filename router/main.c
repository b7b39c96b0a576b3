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
#include <sys/stat.h>

#include "common/httpc.h"
#include "common/log.h"
#include "common/stage.h"
#include "common/wsconfig.h"
#include "common/xalloc.h"
#include "router/engine.h"

typedef struct Router {
    Httpc *http;
    WsWatcher *ws; /* NULL when there is no workspace config and none is needed */
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
    if (httpc_set_connect_to(r->http, env->cfg->router.connect_to, err) < 0 ||
        httpc_set_ca_file(r->http, env->cfg->router.ca_file, err) < 0) {
        err_prefix(err, "router configuration");
        httpc_destroy(r->http);
        free(r);
        return NULL;
    }
    /* the workspace config names destination types and which destinations
     * are transformed here (transformAt router); batching and the proxy
     * need it, otherwise it is read when there is one, so a router with
     * neither and no file still starts (its jobs are then all delivered as
     * they are) */
    bool needed = env->cfg->router.batch_destination_types[0] != '\0' ||
                  env->cfg->router.proxy_destination_types[0] != '\0';
    struct stat st;
    if (needed || env->cfg->workspace.control_plane_url[0] != '\0' ||
        stat(env->cfg->workspace.path, &st) == 0) {
        r->ws = ws_watcher_create(env->base, &env->cfg->workspace, NULL, NULL, err);
        if (r->ws == NULL) {
            err_prefix(err, needed ? "router.batch_destination_types and proxy_destination_types"
                                     " need the workspace config"
                                   : "router workspace config");
            httpc_destroy(r->http);
            free(r);
            return NULL;
        }
    } else {
        log_info("workspace_config_absent",
                 "path=%s transform_at_router=off batching=off proxy=off",
                 env->cfg->workspace.path);
    }
    r->engine =
        engine_create(env->base, env->cfg, env->pool, env->lease, r->http, env->metrics, r->ws);
    engine_set_ops(r->engine, env->ops);
    return r;
}

static void destroy(void *work)
{
    Router *r = work;
    engine_destroy(r->engine);
    httpc_destroy(r->http);
    ws_watcher_destroy(r->ws);
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
