/* Warehouse rows: turns one RudderStack event into the rows a RudderStack
 * warehouse gets for it (rudder-transformer src/warehouse/index.js):
 *   track    -> tracks + the event's own table (properties flattened)
 *   identify -> identifies + users (when userId is set)
 *   page, screen, group, alias -> pages, screens, groups, aliases
 * Nested objects are flattened with "_" (context.library.name ->
 * context_library_name), names and types per wh_names and wh_types.
 * Owns the rows it builds (wh_rows_clear frees them); pure otherwise and
 * thread-safe. Used by warehouse. */
#ifndef BATCHROUTER_WH_ROWS_H
#define BATCHROUTER_WH_ROWS_H

#include <stdbool.h>
#include <stddef.h>

#include "batchrouter/wh_names.h"
#include "batchrouter/wh_types.h"
#include "common/err.h"
#include "common/hmap.h"

/* A column or table name: at most 63 bytes plus a "_" prefix. */
#define WH_COL_BUF (WH_NAME_MAX + 2)

/* Columns are many (a batch of 10,000 events holds some 600,000) and their
 * names few, so a column points to its name, interned once per WhRows. */
typedef struct WhCol {
    const char *name; /* owned by the WhRows (valid until wh_rows_clear) */
    WhValue value;
} WhCol;

typedef struct WhRow {
    char table[WH_COL_BUF];
    bool is_users; /* the users table: merged per id instead of appended */
    WhCol *cols;
    int ncols, cap;
    HMap *names; /* the WhRows' interned names */
} WhRow;

typedef struct WhRows {
    WhRow *rows;
    int n, cap;
    HMap names; /* name -> its one copy */
} WhRows;

/* What the event does not carry itself. */
typedef struct WhEventMeta {
    const char *source_id;      /* context_source_id */
    const char *destination_id; /* context_destination_id */
    const char *now_iso;        /* receivedAt when the event has no valid one */
    const char *auto_id;        /* messageId when the event has none ("auto-<uuid>") */
} WhEventMeta;

void wh_rows_init(WhRows *r);
/* Frees every row (the WhRows stays usable). */
void wh_rows_clear(WhRows *r);

/* Appends the rows of the event json[0..len) to out. ERR_INVALID (and
 * nothing appended) when it is not a JSON object or its type is missing or
 * unknown: RudderStack fails such an event. */
MUST_CHECK int wh_rows_add_event(WhRows *out, const char *json, size_t len, const WhEventMeta *meta,
                                 Err *err);

/* The column named name in row, or NULL. */
const WhCol *wh_row_get(const WhRow *row, const char *name);

#endif
