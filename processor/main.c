/* pintle processor: gw queue -> transformer -> rt / batch_rt queues.
 *
 * The service skeleton (common/stage.c) owns the loop, the stage's db
 * connection, leases, gw hints, /health and /metrics and signals; this file
 * adds what is the processor's: the workspace watcher, the libcurl-multi
 * client for the transformer, the rt and batch_rt hint publishers and the
 * pipeline. SIGTERM/SIGINT: abandon a batch being transformed (its requests
 * are cancelled; uncommitted work is simply read again) or let a database
 * step finish, never past processor.shutdown_timeout_ms; then the leases
 * are freed and the process exits 0. */
#include <stdio.h>
#include <stdlib.h>

#include "common/hint.h"
#include "common/httpc.h"
#include "common/stage.h"
#include "common/wsconfig.h"
#include "common/xalloc.h"
#include "processor/pipeline.h"

typedef struct Processor {
    Httpc *http;
    HintPub *rt_hints, *batch_hints;
    DbPool *hint_pool; /* lookup of the routers' and batchrouters' endpoints */
    WsWatcher *ws;
    Pipeline *pipeline;
} Processor;

static void settings(const Config *cfg, StageSettings *out)
{
    *out = (StageSettings){cfg->processor.listen_address, cfg->processor.admin_port,
                           cfg->processor.shutdown_timeout_ms};
}

static void destroy(void *work)
{
    Processor *p = work;
    pipeline_destroy(p->pipeline);
    httpc_destroy(p->http);
    hint_pub_close(p->rt_hints);
    hint_pub_close(p->batch_hints);
    db_pool_destroy(p->hint_pool);
    ws_watcher_destroy(p->ws);
    free(p);
}

static void *create(const StageEnv *env, Err *err)
{
    Processor *p = xcalloc(1, sizeof *p);
    const Config *cfg = env->cfg;
    p->ws = ws_watcher_create(env->base, &cfg->workspace, NULL, NULL, err);
    if (p->ws == NULL)
        goto fail;
    if (cfg->hints.enabled) {
        /* The stage's connection is the pipeline's alone, so the lookup of
         * the consumers' endpoints (common/hint.h) gets its own. */
        const HintsConfig *h = &cfg->hints;
        if (h->discovery_interval_ms > 0)
            p->hint_pool = db_pool_create(env->base, &cfg->db, "pintle-processor-hints", 1);
        p->rt_hints = hint_pub_open(env->base, "router", h->router_endpoints, p->hint_pool,
                                    h->discovery_interval_ms, err);
        if (p->rt_hints == NULL)
            goto fail;
        p->batch_hints = hint_pub_open(env->base, "batchrouter", h->batchrouter_endpoints,
                                       p->hint_pool, h->discovery_interval_ms, err);
        if (p->batch_hints == NULL)
            goto fail;
    }
    p->http = httpc_create(env->base, cfg->processor.max_inflight);
    p->pipeline = pipeline_create(env->base, cfg, env->pool, env->lease, p->http, p->rt_hints,
                                  p->batch_hints, p->ws, env->metrics);
    pipeline_set_ops(p->pipeline, env->ops);
    return p;
fail:
    destroy(p);
    return NULL;
}

static void kick(void *work)
{
    Processor *p = work;
    pipeline_kick(p->pipeline);
}

static void leases_changed(void *work)
{
    Processor *p = work;
    pipeline_leases_changed(p->pipeline);
}

static void stop(void *work, int deadline_ms, void (*done)(void *), void *arg)
{
    Processor *p = work; /* pipeline_stop keeps processor.shutdown_timeout_ms itself */
    pipeline_stop(p->pipeline, done, arg);
}

static bool ready(void *work, char *detail, size_t size)
{
    Processor *p = work;
    return pipeline_ready(p->pipeline, detail, size);
}

int main(int argc, char **argv)
{
    static const StageOps ops = {"processor",    settings, create, destroy, kick,
                                 leases_changed, stop,     ready,  NULL};
    return stage_main(argc, argv, &ops);
}
