/* pintle batchrouter: batch_rt jobs -> object storage (S3, MINIO, DigitalOcean
 * Spaces: gzip JSON Lines objects) and Postgres warehouses.
 *
 * The service skeleton (common/stage.c) owns the loop, the stage's db
 * connection, leases, batch_rt hints, /health and /metrics and signals;
 * this file adds the libcurl-multi client for the uploads and the engine
 * (batchrouter/engine.c). Warehouse loads are blocking libpq calls: they
 * run on one worker thread per POSTGRES destination (batchrouter/
 * whworker.c), never on the loop. SIGTERM/SIGINT: plan nothing more, let
 * batches in flight finish, cancel uploads still running shortly before
 * batchrouter.shutdown_timeout_ms (their batches stay journaled and are
 * redone, identically, by whoever takes the partition), free the leases,
 * exit 0. */
#include <stdio.h>
#include <stdlib.h>

#include "batchrouter/engine.h"
#include "common/httpc.h"
#include "common/stage.h"
#include "common/xalloc.h"

typedef struct Batchrouter {
    Httpc *http;
    Engine *engine;
} Batchrouter;

static void settings(const Config *cfg, StageSettings *out)
{
    *out = (StageSettings){cfg->batchrouter.listen_address, cfg->batchrouter.admin_port,
                           cfg->batchrouter.shutdown_timeout_ms};
}

static void destroy(void *work)
{
    Batchrouter *b = work;
    engine_destroy(b->engine);
    httpc_destroy(b->http);
    free(b);
}

static void *create(const StageEnv *env, Err *err)
{
    Batchrouter *b = xcalloc(1, sizeof *b);
    b->http = httpc_create(env->base, 8);
    b->engine = engine_create(env->base, env->cfg, env->pool, env->lease, b->http, env->metrics,
                              err);
    if (b->engine == NULL) {
        destroy(b);
        return NULL;
    }
    return b;
}

static void kick(void *work)
{
    Batchrouter *b = work;
    engine_kick(b->engine);
}

static void leases_changed(void *work)
{
    Batchrouter *b = work;
    engine_leases_changed(b->engine);
}

static void stop(void *work, int deadline_ms, void (*done)(void *), void *arg)
{
    Batchrouter *b = work;
    engine_stop(b->engine, deadline_ms, done, arg);
}

static bool ready(void *work, char *detail, size_t size)
{
    Batchrouter *b = work;
    return engine_ready(b->engine, detail, size);
}

int main(int argc, char **argv)
{
    static const StageOps ops = {"batchrouter",  settings, create, destroy, kick,
                                 leases_changed, stop,     ready,  NULL};
    return stage_main(argc, argv, &ops);
}
