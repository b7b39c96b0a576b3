/* Workspace config: RudderStack's exported workspace JSON (sources, their
 * destinations and transformations), keys matched case-insensitively.
 * A Workspace is an immutable, reference-counted snapshot. WsWatcher holds
 * a reference to the current one and swaps in a new one when the file (or
 * the control plane's answer) changes, dropping its reference to the old.
 * Synchronous users (the gateway looking up a write key) borrow the current
 * snapshot with ws_watcher_get; work that outlives the loop iteration (the
 * processor's batch, whose transformer requests point into the snapshot)
 * holds its own reference (ws_watcher_ref ... ws_unref), so a reload never
 * frees what it still uses. Single-threaded: counts are plain ints. */
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
    bool batch;                   /* delivered by the batchrouter (object storage, warehouses) */
    /* destinationDefinition.config.transformAtV1 (else transformAt), else
     * "processor": where the destination transform runs */
    const char *transform_at;
    /* transform_at is "router" (and not a batch type): the processor stores
     * the event as it is and the router sends it through /routerTransform */
    bool router_transform;
    const char **supported_types; /* lower-case; NULL when not restricted */
    int n_supported_types;
    json_object *obj; /* the destination object as exported (borrowed) */
    /* The first user transformation's versionId (else its id, else ""),
     * or NULL when transformations[] is missing or empty. */
    const char *transformation_id;
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
    int refs; /* references held; the snapshot is freed with the last */
    json_object *root;
    WsSource *sources;
    int nsources;
    HMap by_write_key;
    HMap by_source_id;
    /* settings.dataRetention (RudderStack's names): storagePreferences.
     * gatewayDumps asks for the raw archive of gw events; with
     * useSelfStorage they go to storageBucket {type, config}, else to the
     * operator's default bucket. Applies to every source of the export. */
    bool gateway_dumps;
    bool use_self_storage;
    const char *storage_bucket_type; /* "" when none */
    json_object *storage_bucket_config; /* borrowed; NULL when none */
} Workspace;

/* Parses an export. Errors name what is wrong. The caller holds the one
 * reference and drops it with ws_unref (or ws_destroy). */
Workspace *ws_parse(const char *json, size_t len, Err *err);
/* Takes one more reference to ws and returns it: ws stays valid, and
 * unchanged, until the matching ws_unref. */
const Workspace *ws_ref(const Workspace *ws);
/* Drops one reference; the last one frees the snapshot. NULL is a no-op. */
void ws_unref(const Workspace *ws);
/* Drops the reference ws_parse or ws_load_file returned (ws_unref). */
void ws_destroy(Workspace *ws);
/* Borrowed; NULL if the write key is unknown. Deleted sources are absent. */
const WsSource *ws_source_by_write_key(const Workspace *ws, const char *write_key);
const WsSource *ws_source_by_id(const Workspace *ws, const char *source_id);
const WsDestination *ws_destination(const WsSource *s, const char *dest_id);
bool ws_dest_supports(const WsDestination *d, const char *type);
/* The destination object as RudderStack sends it to the transformer
 * (capitalised keys: ID, Name, Config, Enabled, WorkspaceID,
 * IsProcessorEnabled, DestinationDefinition{ID, Name, DisplayName, Config},
 * Transformations[{VersionID, ID, Config}]). Caller frees. */
char *ws_destination_format(const WsSource *s, const WsDestination *d);

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
/* The current snapshot, borrowed: valid only until control returns to the
 * loop (a reload may free it then). Cheap; for synchronous lookups. */
const Workspace *ws_watcher_get(const WsWatcher *w);
/* The current snapshot, held: the caller owns one reference and drops it
 * with ws_unref; reloads meanwhile do not free it. */
const Workspace *ws_watcher_ref(const WsWatcher *w);
/* Reads and parses a file once. */
Workspace *ws_load_file(const char *path, Err *err);

#endif
