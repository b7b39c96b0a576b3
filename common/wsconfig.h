/* Workspace config: RudderStack's exported workspace JSON (sources, their
 * destinations and transformations), keys matched case-insensitively.
 * A Workspace is an immutable snapshot; WsWatcher owns the current one and
 * replaces it when the file changes (polled on the loop), so a request that
 * looked a source up finishes with the snapshot it started with as long as
 * it copies what it keeps. */
#ifndef COMMON_WSCONFIG_H
#define COMMON_WSCONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "common/cfg.h"
#include "common/err.h"
#include "common/hmap.h"

struct event_base;

typedef struct WsDestination {
    const char *id;
    const char *name;
    const char *def_name;         /* destinationDefinition.name, e.g. WEBHOOK */
    const char *def_display_name; /* destinationDefinition.displayName, e.g. Webhook */
    bool enabled;
    bool processor_enabled;
    bool batch; /* delivered by the batchrouter (object storage, warehouses) */
    const char **supported_types; /* lower-case; NULL when not restricted */
    int n_supported_types;
    json_object *obj;             /* the destination object as exported (borrowed) */
    const char *transformation_id; /* first transformation's id or NULL */
} WsDestination;

typedef struct WsSource {
    const char *id;
    const char *name;
    const char *write_key;
    const char *workspace_id;
    bool enabled;
    WsDestination *dests;
    int ndests;
    json_object *obj;
} WsSource;

typedef struct Workspace {
    json_object *root;
    WsSource *sources;
    int nsources;
    HMap by_write_key;
    HMap by_source_id;
} Workspace;

/* Parses an export. Errors name what is wrong. Caller frees with ws_destroy. */
Workspace *ws_parse(const char *json, size_t len, Err *err);
void ws_destroy(Workspace *ws);
/* Borrowed; NULL if the write key is unknown. Deleted sources are absent. */
const WsSource *ws_source_by_write_key(const Workspace *ws, const char *write_key);
const WsSource *ws_source_by_id(const Workspace *ws, const char *source_id);
const WsDestination *ws_destination(const WsSource *s, const char *dest_id);
bool ws_dest_supports(const WsDestination *d, const char *type);

typedef struct WsWatcher WsWatcher;
/* Loads the workspace config now (failure is an error) and re-checks it every
 * poll_interval_ms; on a change that parses, swaps the snapshot and calls
 * on_change. A change that does not parse is logged once and the old
 * snapshot stays. The source is the control plane when
 * cfg->control_plane_url is set (GET with the workspace token as the
 * Basic-auth user; the first fetch blocks, later ones run on the loop),
 * else the file cfg->path. */
WsWatcher *ws_watcher_create(struct event_base *base, const WorkspaceConfigCfg *cfg,
                             void (*on_change)(void *arg), void *arg, Err *err);
void ws_watcher_destroy(WsWatcher *w);
/* The current snapshot (borrowed; valid until the next loop iteration that
 * reloads). */
const Workspace *ws_watcher_get(const WsWatcher *w);
/* Reads and parses a file once. */
Workspace *ws_load_file(const char *path, Err *err);

#endif
