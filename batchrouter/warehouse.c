/* Placeholder until the warehouse loader lands: every load is refused as
 * retryable, so POSTGRES destinations' batches wait (nothing is lost). */
#include "batchrouter/warehouse.h"

#include <stdlib.h>

struct Warehouse {
    int unused;
};

Warehouse *warehouse_create(const char *config_json, const WarehouseSettings *s, Err *err)
{
    (void)config_json;
    (void)s;
    (void)err;
    return calloc(1, sizeof(Warehouse));
}

WhStatus warehouse_load(Warehouse *w, const WhLoad *load, WhResult *res, Err *err)
{
    (void)w;
    (void)load;
    (void)res;
    err_set(err, ERR_AGAIN, "the Postgres warehouse loader is not built yet");
    return WH_RETRY;
}

void warehouse_destroy(Warehouse *w)
{
    free(w);
}
