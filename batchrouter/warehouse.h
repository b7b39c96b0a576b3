/* The Postgres warehouse (destination type POSTGRES): loads batches of
 * events into RudderStack-shaped tables (tracks, identifies, users, pages,
 * screens, groups, aliases, one table per track event name, rudder_discards)
 * in the destination's namespace, adding columns as new properties appear.
 *
 * Owns one blocking libpq connection to the warehouse (reconnected on
 * failure). Blocking: called only from a batchrouter worker thread, one
 * Warehouse per destination, never from the event loop and never from two
 * threads at once.
 *
 * Idempotent: each load is one transaction that also records load_id in a
 * ledger table in the namespace; a load whose id is already recorded
 * inserts nothing and reports already_loaded. */
#ifndef BATCHROUTER_WAREHOUSE_H
#define BATCHROUTER_WAREHOUSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct Warehouse Warehouse;

typedef enum WhStatus {
    WH_OK = 0,    /* loaded, or already loaded before */
    WH_RETRY = 1, /* transient (connection, lock, server): try again later */
    WH_ABORT = 2, /* permanent for this batch (bad destination config): dead letters */
} WhStatus;

/* One batch: the events of one (source, destination) in job-id order. */
typedef struct WhLoad {
    const char *load_id; /* stable id of the batch: the same after any crash or retry */
    const char *workspace_id;
    const char *source_id;
    const char *destination_id;
    int nevents;
    const char *const *events; /* JSON text of each event (the batch_rt payload) */
    const size_t *lens;        /* byte length of each */
} WhLoad;

typedef struct WhResult {
    bool already_loaded; /* the ledger had load_id: nothing inserted */
    int64_t rows;        /* rows inserted over all tables (users upserts count) */
    int tables;          /* tables written */
    int columns_added;   /* ALTER TABLE ADD COLUMN done by this load */
    int discards;        /* values that went to rudder_discards */
} WhResult;

typedef struct WarehouseSettings {
    int connect_timeout_s;
    int statement_timeout_ms;
    /* the namespace when the config has none: as RudderStack, the
     * source's name (made safe like a configured one); NULL: "rudder" */
    const char *default_namespace;
} WarehouseSettings;

/* config_json: the destination's "config" object from the workspace config
 * (RudderStack's keys host, port, database, user, password, namespace,
 * sslMode). Copies what it keeps of s. NULL with err set when the config is unusable (missing host or
 * database): the caller aborts that destination's batches. Does not connect. */
Warehouse *warehouse_create(const char *config_json, const WarehouseSettings *s, Err *err);

/* Loads one batch in one transaction. On WH_RETRY/WH_ABORT err says why
 * (server message included) and nothing of the batch is committed. */
WhStatus warehouse_load(Warehouse *w, const WhLoad *load, WhResult *res, Err *err);

void warehouse_destroy(Warehouse *w);

#endif
