/* Warehouse worker thread (see whworker.h). The thread waits on a condition
 * variable for a load, runs warehouse_load (blocking) and writes one byte
 * to a pipe; the loop's read event on the pipe takes the result under the
 * mutex and calls done(). One load at a time, so a byte always means the
 * one load in progress. */
#include "batchrouter/whworker.h"

#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/xalloc.h"

struct WhWorker {
    struct event_base *base;
    Warehouse *wh;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pipe_fd[2];
    struct event *ev;
    bool stop;
    bool has_load;  /* a load waits for the thread or runs */
    bool finished;  /* the thread's result waits for the loop */
    /* the load (owned copies) */
    WhLoad load;
    char *strings[4];
    char **events;
    size_t *lens;
    /* the result */
    WhStatus status;
    WhResult res;
    Err err;
    WhDoneCb done;
    void *arg;
};

static void free_load(WhWorker *w)
{
    for (int i = 0; i < w->load.nevents; i++)
        free(w->events[i]);
    free(w->events);
    free(w->lens);
    for (int i = 0; i < 4; i++)
        free(w->strings[i]);
    memset(w->strings, 0, sizeof w->strings);
    w->events = NULL;
    w->lens = NULL;
    memset(&w->load, 0, sizeof w->load);
}

static void *run(void *arg)
{
    WhWorker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && !(w->has_load && !w->finished))
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        WhLoad load = w->load;
        pthread_mutex_unlock(&w->mu);
        WhResult res;
        memset(&res, 0, sizeof res);
        Err err;
        err_clear(&err);
        WhStatus st = warehouse_load(w->wh, &load, &res, &err);
        pthread_mutex_lock(&w->mu);
        w->status = st;
        w->res = res;
        w->err = err;
        w->finished = true;
        char b = 1;
        if (write(w->pipe_fd[1], &b, 1) < 0) {
            /* the pipe is never full: one byte per load */
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void on_pipe(evutil_socket_t fd, short what, void *arg)
{
    WhWorker *w = arg;
    char b[16];
    while (read(fd, b, sizeof b) > 0) {
    }
    pthread_mutex_lock(&w->mu);
    if (!w->finished) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    WhStatus st = w->status;
    WhResult res = w->res;
    Err err = w->err;
    WhDoneCb done = w->done;
    void *darg = w->arg;
    w->finished = false;
    w->has_load = false;
    free_load(w);
    pthread_mutex_unlock(&w->mu);
    done(darg, st, &res, st == WH_OK ? NULL : &err);
}

WhWorker *whworker_create(struct event_base *base, const char *config_json,
                          const WarehouseSettings *s, Err *err)
{
    Warehouse *wh = warehouse_create(config_json, s, err);
    if (wh == NULL)
        return NULL;
    WhWorker *w = xcalloc(1, sizeof *w);
    w->base = base;
    w->wh = wh;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pipe2(w->pipe_fd, O_CLOEXEC | O_NONBLOCK) < 0)
        abort();
    w->ev = event_new(base, w->pipe_fd[0], EV_READ | EV_PERSIST, on_pipe, w);
    event_add(w->ev, NULL);
    if (pthread_create(&w->thread, NULL, run, w) != 0)
        abort();
    return w;
}

void whworker_destroy(WhWorker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL); /* a load in progress ends first */
    free_load(w);
    event_free(w->ev);
    close(w->pipe_fd[0]);
    close(w->pipe_fd[1]);
    warehouse_destroy(w->wh);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

bool whworker_busy(const WhWorker *w)
{
    return w->has_load;
}

int whworker_start(WhWorker *w, const WhLoad *load, WhDoneCb done, void *arg)
{
    pthread_mutex_lock(&w->mu);
    if (w->has_load) {
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    int n = load->nevents;
    w->events = xcalloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    w->lens = xcalloc((size_t)(n > 0 ? n : 1), sizeof(size_t));
    for (int i = 0; i < n; i++) {
        w->events[i] = xmalloc(load->lens[i] + 1);
        memcpy(w->events[i], load->events[i], load->lens[i]);
        w->events[i][load->lens[i]] = '\0';
        w->lens[i] = load->lens[i];
    }
    w->strings[0] = xstrdup(load->load_id);
    w->strings[1] = xstrdup(load->workspace_id ? load->workspace_id : "");
    w->strings[2] = xstrdup(load->source_id);
    w->strings[3] = xstrdup(load->destination_id);
    w->load = (WhLoad){w->strings[0], w->strings[1], w->strings[2], w->strings[3], n,
                       (const char *const *)w->events, w->lens};
    w->done = done;
    w->arg = arg;
    w->has_load = true;
    w->finished = false;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}
