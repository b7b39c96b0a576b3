/* Warehouse data types: RudderStack's types of a value (string, int,
 * float, boolean, datetime, json), their Postgres column types, and what
 * happens to a value whose type differs from its column's (kept as it is,
 * converted, or sent to rudder_discards), as rudder-server's
 * HandleSchemaChange decides. Pure functions; owns nothing; thread-safe.
 * Used by wh_rows (inference) and warehouse (column types, discards). */
#ifndef BATCHROUTER_WH_TYPES_H
#define BATCHROUTER_WH_TYPES_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "common/buf.h"

typedef enum WhType {
    WH_TYPE_STRING = 0,
    WH_TYPE_INT,
    WH_TYPE_FLOAT,
    WH_TYPE_BOOLEAN,
    WH_TYPE_DATETIME,
    WH_TYPE_JSON,
    WH_TYPE_OTHER, /* a column of a Postgres type RudderStack does not create */
} WhType;

/* A value as it will be written: its inferred type and its text for COPY. */
typedef struct WhValue {
    WhType type;
    bool is_json; /* text is a JSON document (arrays), not a plain string */
    char *text;   /* owned by whoever holds the WhValue */
} WhValue;

/* "string", "int", ... (RudderStack's names). */
const char *wh_type_name(WhType t);
/* The Postgres column type created for t: text, bigint, numeric, boolean,
 * timestamptz, jsonb. */
const char *wh_type_pg(WhType t);
/* The type of an existing column from format_type() text ("bigint",
 * "timestamp with time zone", "character varying(32)", ...). */
WhType wh_type_from_pg(const char *pg_type);

/* RudderStack's validTimestamp (its ISO 8601 regex and the year range
 * 0001..9999), also rejecting dates that do not exist. On true, out gets
 * the instant as "YYYY-MM-DDTHH:MM:SS.mmmZ" in UTC (new Date(v).toISOString();
 * no offset means UTC). out needs 32 bytes. */
bool wh_timestamp_parse(const char *s, char out[32]);

/* RudderStack's getDataType of a JSON value plus its text: numbers are int
 * when integral (and within bigint) else float, booleans boolean, strings
 * datetime when they are timestamps (text normalised to UTC) else string,
 * arrays string holding their JSON text. Returns false for blank values
 * (null, "", empty arrays), which make no column. Objects are the caller's
 * (they are flattened). On true v->text is malloc'ed. */
bool wh_value_infer(json_object *j, WhValue *v);

typedef enum WhFit {
    WH_FIT_KEEP,    /* write *out_text (converted if needed) into the column */
    WH_FIT_DISCARD, /* the value goes to rudder_discards; the column stays NULL */
} WhFit;

/* Whether value v fits a column of type column: same type; any value into
 * a string column (as text); int into float; float into int (truncated, if
 * within bigint); anything into json (strings quoted as JSON); anything
 * else is discarded. On KEEP the text to write is appended to out. */
WhFit wh_value_fit(WhType column, const WhValue *v, Buf *out);

#endif
