#include "common/wsconfig.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <curl/curl.h>

#include "common/httpc.h"
#include "common/ids.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"

/* Destination types the batchrouter delivers (DESIGN §6); the rest go to the router. */
static const char *const batch_types[] = {"S3", "MINIO", "GCS",       "AZURE_BLOB", "POSTGRES",
                                          "RS", "BQ",    "SNOWFLAKE", "CLICKHOUSE", NULL};

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
    /* as rudder-server reads it: transformAtV1, else the older transformAt */
    json_object *dcfg = jsonu_get_ci(def, "config");
    d->transform_at = jsonu_str_ci(dcfg, "transformAtV1", jsonu_str_ci(dcfg, "transformAt", NULL));
    if (d->transform_at == NULL || d->transform_at[0] == '\0')
        d->transform_at = "processor";
    d->router_transform = !d->batch && strcasecmp(d->transform_at, "router") == 0;
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
        /* never NULL here: a listed transformation without ids must still not be skipped */
        d->transformation_id = jsonu_str_ci(t0, "versionId", jsonu_str_ci(t0, "id", ""));
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
    ws->refs = 1;
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
    json_object *dr = jsonu_get_ci(jsonu_get_ci(root, "settings"), "dataRetention");
    ws->gateway_dumps = jsonu_bool_ci(jsonu_get_ci(dr, "storagePreferences"), "gatewayDumps", false);
    ws->use_self_storage = jsonu_bool_ci(dr, "useSelfStorage", false);
    json_object *bucket = jsonu_get_ci(dr, "storageBucket");
    ws->storage_bucket_type = jsonu_str_ci(bucket, "type", "");
    ws->storage_bucket_config = jsonu_get_ci(bucket, "config");
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

const Workspace *ws_ref(const Workspace *ws)
{
    /* the count is the one mutable field of an otherwise immutable snapshot */
    ((Workspace *)ws)->refs++;
    return ws;
}

void ws_destroy(Workspace *ws)
{
    ws_unref(ws);
}

void ws_unref(const Workspace *cws)
{
    if (cws == NULL)
        return;
    Workspace *ws = (Workspace *)cws;
    ASSERT(ws->refs > 0);
    if (--ws->refs > 0)
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
    char *url;
    char *auth; /* "Authorization: Basic ..." */
    Httpc *http;
    bool fetching;
    uint8_t body_md5[16];
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

static void swap_in(WsWatcher *w, Workspace *ws, const char *from);

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
    swap_in(w, ws, "file");
}

static void swap_in(WsWatcher *w, Workspace *ws, const char *from)
{
    Workspace *old = w->current;
    w->current = ws;
    log_info("workspace_reloaded", "from=%s sources=%d", from, ws->nsources);
    if (w->on_change)
        w->on_change(w->arg);
    ws_destroy(old);
}

static void on_fetched(void *arg, const HttpcResponse *r)
{
    WsWatcher *w = arg;
    w->fetching = false;
    if (r->status != 200) {
        if (!w->warned) {
            char q[600];
            log_warn("workspace_fetch_failed", "url=%s status=%ld error=%s", w->url, r->status,
                     log_quote(q, sizeof q, r->error ? r->error : r->body));
        }
        w->warned = true;
        return;
    }
    uint8_t md5[16];
    md5_digest(r->body, r->body_len, md5);
    if (memcmp(md5, w->body_md5, sizeof md5) == 0)
        return; /* unchanged */
    Err err;
    Workspace *ws = ws_parse(r->body, r->body_len, &err);
    memcpy(w->body_md5, md5, sizeof md5);
    if (ws == NULL) {
        char q[1100];
        log_warn("workspace_reload_failed", "url=%s error=%s", w->url,
                 log_quote(q, sizeof q, err.msg));
        return;
    }
    w->warned = false;
    swap_in(w, ws, "control_plane");
}

static void poll_url(evutil_socket_t fd, short what, void *arg)
{
    WsWatcher *w = arg;
    if (w->fetching)
        return;
    const char *headers[] = {w->auth, NULL};
    /* an export of a large workspace runs to megabytes */
    HttpcRequest req = {"GET", w->url, headers, NULL, 0, 30000, .max_response_bytes = 256u << 20};
    if (httpc_start(w->http, &req, on_fetched, w) == 0)
        w->fetching = true;
}

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    buf_append(arg, p, size * n);
    return size * n;
}

/* The first fetch blocks: a service does not start without its workspace. */
static Workspace *fetch_blocking(WsWatcher *w, Err *err)
{
    CURL *c = curl_easy_init();
    Buf body;
    buf_init(&body);
    struct curl_slist *h = curl_slist_append(NULL, w->auth);
    curl_easy_setopt(c, CURLOPT_URL, w->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    Workspace *ws = NULL;
    if (rc != CURLE_OK)
        err_set(err, ERR_IO, "could not fetch workspace config from \"%s\": %s", w->url,
                curl_easy_strerror(rc));
    else if (status != 200)
        err_set(err, ERR_IO, "could not fetch workspace config from \"%s\": HTTP %ld", w->url,
                status);
    else if ((ws = ws_parse(body.data ? body.data : "", body.len, err)) == NULL)
        err_prefix(err, "%s", w->url);
    else
        md5_digest(body.data, body.len, w->body_md5);
    buf_deinit(&body);
    return ws;
}

WsWatcher *ws_watcher_create(struct event_base *base, const WorkspaceConfigCfg *cfg,
                             void (*on_change)(void *), void *arg, Err *err)
{
    WsWatcher *w = xcalloc(1, sizeof(*w));
    w->on_change = on_change;
    w->arg = arg;
    w->every.tv_sec = cfg->poll_interval_ms / 1000;
    w->every.tv_usec = (cfg->poll_interval_ms % 1000) * 1000;
    if (cfg->control_plane_url[0] != '\0') {
        w->url = xstrdup(cfg->control_plane_url);
        Buf cred, b64;
        buf_init(&cred);
        buf_init(&b64);
        buf_printf(&cred, "%s:", cfg->control_plane_token);
        static const char tbl[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const unsigned char *in = (const unsigned char *)cred.data;
        for (size_t i = 0; i < cred.len; i += 3) {
            unsigned v = (unsigned)in[i] << 16 | (i + 1 < cred.len ? (unsigned)in[i + 1] << 8 : 0) |
                         (i + 2 < cred.len ? in[i + 2] : 0);
            buf_putc(&b64, tbl[v >> 18 & 63]);
            buf_putc(&b64, tbl[v >> 12 & 63]);
            buf_putc(&b64, i + 1 < cred.len ? tbl[v >> 6 & 63] : '=');
            buf_putc(&b64, i + 2 < cred.len ? tbl[v & 63] : '=');
        }
        w->auth = xasprintf("Authorization: Basic %s", b64.data);
        buf_deinit(&cred);
        buf_deinit(&b64);
        w->current = fetch_blocking(w, err);
        if (w->current == NULL) {
            ws_watcher_destroy(w);
            return NULL;
        }
        w->http = httpc_create(base, 1);
        w->timer = event_new(base, -1, EV_PERSIST, poll_url, w);
        event_add(w->timer, &w->every);
        return w;
    }
    struct stat st;
    if (stat(cfg->path, &st) != 0) {
        err_set(err, ERR_IO, "could not open workspace config \"%s\": %m", cfg->path);
        free(w);
        return NULL;
    }
    w->current = ws_load_file(cfg->path, err);
    if (w->current == NULL) {
        free(w);
        return NULL;
    }
    w->path = xstrdup(cfg->path);
    w->seen = st;
    w->timer = event_new(base, -1, EV_PERSIST, poll_file, w);
    event_add(w->timer, &w->every);
    return w;
}

void ws_watcher_destroy(WsWatcher *w)
{
    if (w == NULL)
        return;
    if (w->timer)
        event_free(w->timer);
    httpc_destroy(w->http);
    ws_destroy(w->current);
    free(w->path);
    free(w->url);
    free(w->auth);
    free(w);
}

const Workspace *ws_watcher_get(const WsWatcher *w)
{
    return w->current;
}

const Workspace *ws_watcher_ref(const WsWatcher *w)
{
    return ws_ref(w->current);
}

char *ws_destination_format(const WsSource *s, const WsDestination *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ID", json_object_new_string(d->id));
    json_object_object_add(o, "Name", json_object_new_string(d->name));
    json_object *cfg = jsonu_get_ci(d->obj, "config");
    json_object_object_add(o, "Config", cfg ? json_object_get(cfg) : json_object_new_object());
    json_object_object_add(o, "Enabled", json_object_new_boolean(d->enabled));
    json_object_object_add(o, "WorkspaceID", json_object_new_string(s->workspace_id));
    json_object_object_add(o, "IsProcessorEnabled", json_object_new_boolean(d->processor_enabled));
    json_object *def = jsonu_get_ci(d->obj, "destinationDefinition");
    json_object *dd = json_object_new_object();
    json_object_object_add(dd, "ID", json_object_new_string(jsonu_str_ci(def, "id", "")));
    json_object_object_add(dd, "Name", json_object_new_string(d->def_name));
    json_object_object_add(dd, "DisplayName", json_object_new_string(d->def_display_name));
    json_object *dcfg = jsonu_get_ci(def, "config");
    json_object_object_add(dd, "Config", dcfg ? json_object_get(dcfg) : json_object_new_object());
    json_object_object_add(o, "DestinationDefinition", dd);
    /* RudderStack's TransformationT: {VersionID, ID, Config} */
    json_object *tr = jsonu_get_ci(d->obj, "transformations");
    json_object *trs = json_object_new_array();
    for (size_t i = 0;
         tr && json_object_is_type(tr, json_type_array) && i < json_object_array_length(tr); i++) {
        json_object *t = json_object_array_get_idx(tr, i);
        json_object *x = json_object_new_object();
        json_object_object_add(x, "VersionID",
                               json_object_new_string(jsonu_str_ci(t, "versionId", "")));
        json_object_object_add(x, "ID", json_object_new_string(jsonu_str_ci(t, "id", "")));
        json_object *tc = jsonu_get_ci(t, "config");
        json_object_object_add(x, "Config", tc ? json_object_get(tc) : json_object_new_object());
        json_object_array_add(trs, x);
    }
    json_object_object_add(o, "Transformations", trs);
    char *text = xstrdup(jsonu_to_string(o, NULL));
    json_object_put(o);
    return text;
}
