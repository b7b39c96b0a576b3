/* A worker thread for one warehouse (POSTGRES) destination: the loop hands
 * it one load at a time and hears back on the loop. Owns the thread, the
 * Warehouse (batchrouter/warehouse.h, blocking, used only on the thread),
 * a pipe whose read end the loop watches, and the load in progress. The
 * loop never blocks: whworker_start copies the batch and returns; done()
 * runs on the loop when the load finished. Used by batchrouter/engine.c. */
#ifndef BATCHROUTER_WHWORKER_H
#define BATCHROUTER_WHWORKER_H

#include <stdbool.h>

#include "batchrouter/warehouse.h"
#include "common/err.h"

struct event_base;
typedef struct WhWorker WhWorker;

typedef void (*WhDoneCb)(void *arg, WhStatus st, const WhResult *res, const Err *err);

/* Starts the thread. config_json: the destination's config (copied). NULL
 * with err set when warehouse_create refuses the config. */
WhWorker *whworker_create(struct event_base *base, const char *config_json,
                          const WarehouseSettings *s, Err *err);
/* Stops the thread: waits for a load in progress to end (its done() does
 * not run). */
void whworker_destroy(WhWorker *w);
bool whworker_busy(const WhWorker *w);
/* Hands a load to the thread (all of it is copied). -1 if busy. */
int whworker_start(WhWorker *w, const WhLoad *load, WhDoneCb done, void *arg);

#endif
