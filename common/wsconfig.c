#include "common/wsconfig.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"

/* Destination types the batchrouter delivers (DESIGN §6); the rest go to the router. */
static const char *const batch_types[] = {"S3", "MINIO", "GCS", "AZURE_BLOB", "POSTGRES",
                                          "RS", "BQ", "SNOWFLAKE", "CLICKHOUSE", NULL};

static bool is_batch_type(const char *name)
{
    for (int i = 0; batch_types[i]; i++)
        if (strcasecmp(name, batch_types[i]) == 0)
            return true;
    return false;
}

static int parse_destination(WsDestination *d, json_object *o, const char *src_id, Err *err)
{
    d->obj = o;
    d->id = jsonu_str_ci(o, "id", NULL);
    if (d->id == NULL || d->id[0] == '\0')
        return err_set(err, ERR_INVALID, "a destination of source \"%s\" has no id", src_id);
    d->name = jsonu_str_ci(o, "name", "");
    d->enabled = jsonu_bool_ci(o, "enabled", true);
    d->processor_enabled = jsonu_bool_ci(o, "isProcessorEnabled", true);
    json_object *def = jsonu_get_ci(o, "destinationDefinition");
    d->def_name = jsonu_str_ci(def, "name", NULL);
    if (d->def_name == NULL)
        return err_set(err, ERR_INVALID, "destination \"%s\" has no destinationDefinition.name",
                       d->id);
    d->def_display_name = jsonu_str_ci(def, "displayName", d->def_name);
    d->batch = is_batch_type(d->def_name);
    json_object *types = jsonu_get_ci(jsonu_get_ci(def, "config"), "supportedMessageTypes");
    if (types != NULL && json_object_is_type(types, json_type_array)) {
        size_t n = json_object_array_length(types);
        d->supported_types = xcalloc(n ? n : 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            json_object *t = json_object_array_get_idx(types, i);
            if (json_object_is_type(t, json_type_string))
                d->supported_types[d->n_supported_types++] = json_object_get_string(t);
        }
    }
    json_object *tr = jsonu_get_ci(o, "transformations");
    if (tr != NULL && json_object_is_type(tr, json_type_array) &&
        json_object_array_length(tr) > 0) {
        json_object *t0 = json_object_array_get_idx(tr, 0);
        d->transformation_id = jsonu_str_ci(t0, "versionId", jsonu_str_ci(t0, "id", NULL));
    }
    return 0;
}

Workspace *ws_parse(const char *json, size_t len, Err *err)
{
    json_tokener *tok = json_tokener_new();
    json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (root == NULL || jerr != json_tokener_success) {
        json_object_put(root);
        err_set(err, ERR_INVALID, "workspace config is not valid JSON: %s",
                json_tokener_error_desc(jerr));
        return NULL;
    }
    Workspace *ws = xcalloc(1, sizeof(*ws));
    ws->root = root;
    hmap_init(&ws->by_write_key);
    hmap_init(&ws->by_source_id);
    json_object *sources = jsonu_get_ci(root, "sources");
    if (sources == NULL || !json_object_is_type(sources, json_type_array)) {
        err_set(err, ERR_INVALID, "workspace config has no \"sources\" array");
        ws_destroy(ws);
        return NULL;
    }
    const char *top_ws = jsonu_str_ci(root, "workspaceId", "");
    size_t n = json_object_array_length(sources);
    ws->sources = xcalloc(n ? n : 1, sizeof(WsSource));
    for (size_t i = 0; i < n; i++) {
        json_object *so = json_object_array_get_idx(sources, i);
        if (jsonu_bool_ci(so, "deleted", false))
            continue;
        WsSource *s = &ws->sources[ws->nsources];
        s->obj = so;
        s->id = jsonu_str_ci(so, "id", NULL);
        s->write_key = jsonu_str_ci(so, "writeKey", NULL);
        if (s->id == NULL || s->id[0] == '\0' || s->write_key == NULL || s->write_key[0] == '\0') {
            err_set(err, ERR_INVALID, "source #%zu has no id or no writeKey", i + 1);
            ws_destroy(ws);
            return NULL;
        }
        ws->nsources++;
        s->name = jsonu_str_ci(so, "name", "");
        s->enabled = jsonu_bool_ci(so, "enabled", true);
        s->workspace_id = jsonu_str_ci(so, "workspaceId", top_ws);
        if (s->workspace_id[0] == '\0')
            s->workspace_id = "default";
        if (hmap_put(&ws->by_write_key, s->write_key, s) != NULL) {
            err_set(err, ERR_INVALID, "write key of source \"%s\" is used by another source",
                    s->id);
            ws_destroy(ws);
            return NULL;
        }
        hmap_put(&ws->by_source_id, s->id, s);
        json_object *dests = jsonu_get_ci(so, "destinations");
        size_t nd = dests && json_object_is_type(dests, json_type_array)
                        ? json_object_array_length(dests)
                        : 0;
        s->dests = xcalloc(nd ? nd : 1, sizeof(WsDestination));
        for (size_t j = 0; j < nd; j++) {
            json_object *dobj = json_object_array_get_idx(dests, j);
            if (jsonu_bool_ci(dobj, "deleted", false))
                continue;
            if (parse_destination(&s->dests[s->ndests], dobj, s->id, err) < 0) {
                ws_destroy(ws);
                return NULL;
            }
            s->ndests++;
        }
    }
    return ws;
}

void ws_destroy(Workspace *ws)
{
    if (ws == NULL)
        return;
    for (int i = 0; i < ws->nsources; i++) {
        for (int j = 0; j < ws->sources[i].ndests; j++)
            free(ws->sources[i].dests[j].supported_types);
        free(ws->sources[i].dests);
    }
    free(ws->sources);
    hmap_deinit(&ws->by_write_key);
    hmap_deinit(&ws->by_source_id);
    json_object_put(ws->root);
    free(ws);
}

const WsSource *ws_source_by_write_key(const Workspace *ws, const char *write_key)
{
    return ws ? hmap_get(&ws->by_write_key, write_key) : NULL;
}

const WsSource *ws_source_by_id(const Workspace *ws, const char *source_id)
{
    return ws ? hmap_get(&ws->by_source_id, source_id) : NULL;
}

const WsDestination *ws_destination(const WsSource *s, const char *dest_id)
{
    for (int i = 0; s && i < s->ndests; i++)
        if (strcmp(s->dests[i].id, dest_id) == 0)
            return &s->dests[i];
    return NULL;
}

bool ws_dest_supports(const WsDestination *d, const char *type)
{
    if (d->supported_types == NULL)
        return true;
    for (int i = 0; i < d->n_supported_types; i++)
        if (strcasecmp(d->supported_types[i], type) == 0)
            return true;
    return false;
}

Workspace *ws_load_file(const char *path, Err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        err_set(err, ERR_IO, "could not open workspace config \"%s\": %m", path);
        return NULL;
    }
    char *data = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 131072;
            data = xrealloc(data, cap);
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int ioerr = ferror(f);
    fclose(f);
    if (ioerr) {
        free(data);
        err_set(err, ERR_IO, "could not read workspace config \"%s\"", path);
        return NULL;
    }
    Workspace *ws = ws_parse(data, len, err);
    free(data);
    if (ws == NULL)
        err_prefix(err, "%s", path);
    return ws;
}

struct WsWatcher {
    char *path;
    Workspace *current;
    struct event *timer;
    struct timeval every;
    struct stat seen;
    bool warned;
    void (*on_change)(void *);
    void *arg;
};

static bool same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void poll_file(evutil_socket_t fd, short what, void *arg)
{
    WsWatcher *w = arg;
    struct stat st;
    if (stat(w->path, &st) != 0 || same_stat(&st, &w->seen))
        return;
    Err err;
    Workspace *ws = ws_load_file(w->path, &err);
    if (ws == NULL) {
        if (!w->warned) {
            char q[1100];
            log_warn("workspace_reload_failed", "path=%s error=%s", w->path,
                     log_quote(q, sizeof q, err.msg));
        }
        w->warned = true;
        w->seen = st;
        return;
    }
    w->warned = false;
    w->seen = st;
    Workspace *old = w->current;
    w->current = ws;
    log_info("workspace_reloaded", "path=%s sources=%d", w->path, ws->nsources);
    if (w->on_change)
        w->on_change(w->arg);
    ws_destroy(old);
}

WsWatcher *ws_watcher_create(struct event_base *base, const char *path, int poll_ms,
                             void (*on_change)(void *), void *arg, Err *err)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        err_set(err, ERR_IO, "could not open workspace config \"%s\": %m", path);
        return NULL;
    }
    Workspace *ws = ws_load_file(path, err);
    if (ws == NULL)
        return NULL;
    WsWatcher *w = xcalloc(1, sizeof(*w));
    w->path = xstrdup(path);
    w->current = ws;
    w->seen = st;
    w->on_change = on_change;
    w->arg = arg;
    w->every.tv_sec = poll_ms / 1000;
    w->every.tv_usec = (poll_ms % 1000) * 1000;
    w->timer = event_new(base, -1, EV_PERSIST, poll_file, w);
    event_add(w->timer, &w->every);
    return w;
}

void ws_watcher_destroy(WsWatcher *w)
{
    if (w == NULL)
        return;
    event_free(w->timer);
    ws_destroy(w->current);
    free(w->path);
    free(w);
}

const Workspace *ws_watcher_get(const WsWatcher *w)
{
    return w->current;
}
