/* Warehouse names: how a Postgres warehouse names schemas, tables and
 * columns, following RudderStack's warehouse transform (rudder-transformer
 * src/warehouse/v1/util.js) and rudder-server's ToSafeNamespace. Pure
 * functions over caller buffers; owns nothing; thread-safe. Used by
 * wh_rows (tables and columns of each event) and warehouse (namespace). */
#ifndef BATCHROUTER_WH_NAMES_H
#define BATCHROUTER_WH_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* Postgres identifiers are cut to this many bytes. */
#define WH_NAME_MAX 63
/* Output buffers of the functions below must hold at least this. */
#define WH_NAME_BUF 160

/* RudderStack's transformName: ASCII letters and digits are kept, runs of
 * anything else (including every non-ASCII byte) become one "_", the words
 * are snake_cased as lodash does (camelCase -> camel_case, letters and
 * digits split, "HTMLParser" -> html_parser, ordinals "1st" kept), leading
 * underscores of the input are kept, a leading digit gets a "_" prefix, and
 * the result is cut to max bytes (0: no cut). out gets "" when no letter or
 * digit is left. */
void wh_name_transform(const char *in, size_t max, char *out, size_t outsz);

/* True when name (any case) is a Postgres reserved keyword in RudderStack's
 * list (ReservedKeywords.json, POSTGRES). */
bool wh_name_is_reserved(const char *name);

/* A column name as the transform makes it from a property path such as
 * "context_library_name" or "Product Id": transformName (cut to 63), then
 * safeColumnName (lower case, reserved words prefixed with "_"). "" when
 * nothing is left (the property is dropped). */
void wh_name_column(const char *in, char *out, size_t outsz);

/* The table of a track event named event (the "event" property text):
 * transformName twice, lower case, cut to 63, reserved words and the
 * tables RudderStack creates itself (tracks, pages, screens, aliases,
 * groups, accounts, users, identifies) and rudder_discards and the ledger
 * pintle_loads prefixed with "_". "" when the name
 * has no letter or digit (no event table, as RudderStack). */
void wh_name_event_table(const char *event, char *out, size_t outsz);

/* The value of the "event" column: transformName of the event text (no
 * cut), as RudderStack's transformTableName. */
void wh_name_event_value(const char *event, char *out, size_t outsz);

/* rudder-server's ToSafeNamespace for Postgres: runs of non-alphanumerics
 * become "_", snake_case (no split between letters and digits), a leading
 * digit prefixed with "_", "stringempty" when empty, reserved words
 * prefixed with "_", cut to 63 bytes (Postgres' limit; RudderStack cuts at
 * 127). */
void wh_name_namespace(const char *in, char *out, size_t outsz);

#endif
