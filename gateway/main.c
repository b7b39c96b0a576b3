/* pintle gateway: HTTP ingestion into the gw queue.
 *
 * main() loads the config, optionally forks gateway.workers processes that
 * share the port (SO_REUSEPORT, each with its own loop and db pool), and in
 * each runs: workspace watcher -> HTTP server -> writer (group commit over
 * async libpq). Nothing blocks the loop. SIGTERM/SIGINT: stop accepting,
 * flush pending batches, answer every in-flight request, exit 0. */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/cfg.h"
#include "common/db.h"
#include "common/hint.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/metrics.h"
#include "common/svc.h"
#include "common/wsconfig.h"
#include "common/xalloc.h"
#include "gateway/mshare.h"
#include "gateway/server.h"
#include "gateway/writer.h"

typedef struct App {
    Config cfg;
    struct event_base *base;
    DbPool *pool;
    HintPub *hints;
    Metrics *metrics;
    WsWatcher *ws;
    Writer *writer;
    Server *server;
    struct event *sig_term, *sig_int, *deadline;
    MetricsShare *share; /* several workers: every worker's metrics (supervisor's mapping) */
    int worker;
    struct event *publish;
    Buf snap;
    SvcFatal fatal;
    bool stopping;
    int exit_code;
} App;

static void on_writer_idle(void *arg)
{
    App *app = arg;
    log_info("drained", "backlog=%d", writer_backlog(app->writer));
    /* Replies were queued on their connections; one short pass lets them flush. */
    struct timeval tv = {0, 200 * 1000};
    event_base_loopexit(app->base, &tv);
}

static void on_server_drained(void *arg)
{
    App *app = arg;
    writer_drain(app->writer, on_writer_idle, app);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    App *app = arg;
    log_warn("shutdown_timeout", "backlog=%d", writer_backlog(app->writer));
    writer_abort(app->writer);
    struct timeval tv = {0, 200 * 1000};
    event_base_loopexit(app->base, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    App *app = arg;
    if (app->stopping) {
        log_warn("shutdown_forced", "signal=%d", (int)sig);
        event_base_loopbreak(app->base);
        return;
    }
    app->stopping = true;
    log_info("draining", "signal=%d backlog=%d", (int)sig, writer_backlog(app->writer));
    int ms = app->cfg.gateway.shutdown_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    app->deadline = evtimer_new(app->base, on_deadline, app);
    evtimer_add(app->deadline, &tv);
    server_drain(app->server, on_server_drained, app);
}

static void on_ready(void *arg)
{
    App *app = arg;
    const Workspace *ws = ws_watcher_get(app->ws);
    log_info("ready", "port=%d sources=%d partitions=%d", server_port(app->server), ws->nsources,
             app->cfg.queue.partitions);
}

static void collect(void *arg, Metrics *m)
{
    App *app = arg;
    metrics_set(metrics_series(m, "pintle_gateway_backlog_events",
                               "Events accepted and not yet committed", METRIC_GAUGE, ""),
                writer_backlog(app->writer));
    metrics_set(metrics_series(m, "pintle_db_connections", "Connected database connections",
                               METRIC_GAUGE, ""),
                db_pool_connected(app->pool));
    metrics_set(metrics_series(m, "pintle_db_up", "1 while the database answers", METRIC_GAUGE, ""),
                writer_db_ready(app->writer) ? 1 : 0);
}

/* Publishes this worker's metrics for the others' /metrics. */
static void on_publish(evutil_socket_t fd, short what, void *arg)
{
    App *app = arg;
    buf_reset(&app->snap);
    metrics_snapshot(app->metrics, &app->snap);
    if (!mshare_publish(app->share, app->worker, app->snap.data, app->snap.len))
        log_warn("worker_metrics_too_large", "worker=%d bytes=%zu", app->worker, app->snap.len);
}

static int run(App *app)
{
    Err err;
    app->base = loop_create();
    if (app->base == NULL) {
        log_error("startup_failed", "error=\"could not create event loop\"");
        return 1;
    }
    app->metrics = metrics_create();
    metrics_set_collect(app->metrics, collect, app);
    app->ws = ws_watcher_create(app->base, &app->cfg.workspace, NULL, NULL, &err);
    if (app->ws == NULL) {
        char q[1100];
        log_error("startup_failed", "error=%s", log_quote(q, sizeof q, err.msg));
        return 1;
    }
    app->pool = db_pool_create(app->base, &app->cfg.db, "pintle-gateway", app->cfg.db.pool_size);
    if (app->cfg.hints.enabled) {
        /* Hints go to every live processor: the writer's pool also serves
         * the lookup of their endpoints, on a connection while it is idle. */
        app->hints = hint_pub_open(app->base, "processor", app->cfg.hints.processor_endpoints,
                                   app->pool, app->cfg.hints.discovery_interval_ms, &err);
        if (app->hints == NULL) {
            char q[1100];
            log_error("startup_failed", "error=%s", log_quote(q, sizeof q, err.msg));
            return 1;
        }
    }
    app->fatal.base = app->base;
    db_pool_expect_partitions(app->pool, app->cfg.queue.partitions, svc_on_db_fatal, &app->fatal);
    app->writer = writer_create(app->base, &app->cfg, app->pool, app->hints, app->metrics);
    app->server = server_create(app->base, &app->cfg, app->writer, app->ws, app->metrics, &err);
    if (app->server == NULL) {
        char q[1100];
        log_error("startup_failed", "error=%s", log_quote(q, sizeof q, err.msg));
        return 1;
    }
    if (app->share) {
        server_share_metrics(app->server, app->share, app->worker);
        buf_init(&app->snap);
        app->publish = event_new(app->base, -1, EV_PERSIST, on_publish, app);
        int ms = app->cfg.ops.metrics_publish_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(app->publish, &tv);
        on_publish(-1, 0, app);
    }
    app->sig_term = evsignal_new(app->base, SIGTERM, on_signal, app);
    app->sig_int = evsignal_new(app->base, SIGINT, on_signal, app);
    event_add(app->sig_term, NULL);
    event_add(app->sig_int, NULL);
    /* Ready (and /health 200) only once the database is usable; requests
     * arriving before that wait in the pending batch (db_retry_ms). */
    writer_on_ready(app->writer, on_ready, app);
    event_base_dispatch(app->base);
    return app->fatal.code;
}

static void teardown(App *app)
{
    if (app->publish)
        event_free(app->publish);
    buf_deinit(&app->snap);
    server_destroy(app->server);
    writer_destroy(app->writer);
    db_pool_destroy(app->pool);
    ws_watcher_destroy(app->ws);
    hint_pub_close(app->hints);
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

/* Restart delays of a crashing worker: doubling from the first, capped;
 * a worker that stayed up WORKER_STABLE_MS starts over from the first. */
#define WORKER_RESTART_FIRST_MS 100
#define WORKER_RESTART_MAX_MS   10000
#define WORKER_STABLE_MS        30000

typedef struct WorkerSlot {
    pid_t pid;         /* 0: not running */
    int crashes;       /* consecutive short-lived runs */
    long long started; /* ms, monotonic */
    long long restart_at;
} WorkerSlot;

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Supervises gateway.workers children: forwards SIGTERM/SIGINT, restarts a
 * child that dies on its own (with a growing delay while it keeps dying,
 * so a worker crashing at start cannot make the supervisor spin), exits
 * once all have exited after a signal. */
static int supervise(int workers, int *worker)
{
    WorkerSlot *slots = xcalloc((size_t)workers, sizeof(WorkerSlot));
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    int rc = 0;
    bool stopping = false;
    bool config_error = false;
    int alive = 0;
    for (;;) {
        long long now = mono_ms();
        long long next_restart = -1;
        for (int i = 0; i < workers && !stopping; i++) {
            WorkerSlot *w = &slots[i];
            if (w->pid != 0)
                continue;
            if (w->restart_at > now) {
                if (next_restart < 0 || w->restart_at < next_restart)
                    next_restart = w->restart_at;
                continue;
            }
            pid_t parent = getpid();
            pid_t pid = fork();
            if (pid == 0) {
                /* A worker whose supervisor is gone (even killed -9) drains
                 * and exits instead of serving on unsupervised. */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                    raise(SIGTERM);
                sigprocmask(SIG_SETMASK, &old, NULL);
                free(slots);
                *worker = i;
                return -1; /* child: run the gateway */
            }
            if (pid < 0) {
                log_error("worker_fork_failed", "error=\"%s\"", strerror(errno));
                w->restart_at = now + WORKER_RESTART_MAX_MS;
                continue;
            }
            w->pid = pid;
            w->started = now;
            alive++;
            log_info("worker_started", "worker=%d child_pid=%d", i, (int)pid);
        }
        if (stopping && alive == 0)
            break;
        int sig = 0;
        if (next_restart >= 0) {
            long long wait = next_restart - now;
            struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000};
            sig = sigtimedwait(&set, NULL, &ts);
            if (sig < 0)
                continue; /* a restart is due (or EINTR) */
        } else {
            sigwait(&set, &sig);
        }
        if (sig == SIGTERM || sig == SIGINT) {
            stopping = true;
            for (int i = 0; i < workers; i++)
                if (slots[i].pid > 0)
                    kill(slots[i].pid, SIGTERM);
        }
        int status;
        pid_t pid;
        now = mono_ms();
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (int i = 0; i < workers; i++) {
                WorkerSlot *w = &slots[i];
                if (w->pid != pid)
                    continue;
                w->pid = 0;
                alive--;
                int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (code != 0)
                    rc = code;
                if (code == SVC_EXIT_CONFIG && !stopping) {
                    log_warn("worker_died", "worker=%d child_pid=%d code=%d", i, (int)pid, code);
                    /* a configuration error: restarting cannot help, and it
                     * is the exit code, whatever the others exit with */
                    config_error = true;
                    stopping = true;
                    for (int k = 0; k < workers; k++)
                        if (slots[k].pid > 0)
                            kill(slots[k].pid, SIGTERM);
                    continue;
                }
                if (stopping)
                    continue;
                if (now - w->started >= WORKER_STABLE_MS)
                    w->crashes = 0;
                int delay = WORKER_RESTART_FIRST_MS;
                for (int k = 0; k < w->crashes && delay < WORKER_RESTART_MAX_MS; k++)
                    delay *= 2;
                if (delay > WORKER_RESTART_MAX_MS)
                    delay = WORKER_RESTART_MAX_MS;
                w->crashes++;
                w->restart_at = now + delay;
                log_warn("worker_died",
                         "worker=%d child_pid=%d code=%d uptime_ms=%lld restart_in_ms=%d", i,
                         (int)pid, code, now - w->started, delay);
            }
        }
    }
    free(slots);
    return config_error ? SVC_EXIT_CONFIG : rc;
}

int main(int argc, char **argv)
{
    App app;
    memset(&app, 0, sizeof app);
    int rc = svc_start(argc, argv, "gateway", &app.cfg);
    if (rc >= 0) {
        cfg_deinit(&app.cfg);
        return rc;
    }
    char dsn[1024];
    log_mask_dsn(dsn, sizeof dsn, app.cfg.db.dsn);
    log_info("starting", "port=%d workers=%d dsn=\"%s\" workspace=%s pool_size=%d",
             app.cfg.gateway.port, app.cfg.gateway.workers, dsn, app.cfg.workspace.path,
             app.cfg.db.pool_size);
    if (app.cfg.gateway.workers > 1) {
        app.share = mshare_create(app.cfg.gateway.workers);
        if (app.share == NULL)
            log_warn("worker_metrics_unshared",
                     "workers=%d reason=\"could not map shared memory: each worker's /metrics"
                     " shows only itself\"",
                     app.cfg.gateway.workers);
        rc = supervise(app.cfg.gateway.workers, &app.worker);
        if (rc >= 0) {
            mshare_destroy(app.share);
            log_info("stopped", "code=%d", rc);
            cfg_deinit(&app.cfg);
            return rc;
        }
        log_init("gateway", (LogLevel)log_level_parse(app.cfg.log.level)); /* child: its own pid */
    }
    rc = run(&app);
    teardown(&app);
    mshare_destroy(app.share);
    cfg_deinit(&app.cfg);
    log_info("stopped", "code=%d", rc);
    return rc;
}
