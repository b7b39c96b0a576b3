/* Small json-c helpers used by several executables. Returned objects are
 * borrowed from their parent unless the name says dup. */
#ifndef COMMON_JSONU_H
#define COMMON_JSONU_H

#include <stdbool.h>

#include <json-c/json.h>

/* Member of obj whose key equals key ignoring ASCII case; NULL if absent or
 * obj is not an object. Exact matches are found first (the common case). */
json_object *jsonu_get_ci(json_object *obj, const char *key);
/* String member (case-insensitive key) or def if absent or not a string. */
const char *jsonu_str_ci(json_object *obj, const char *key, const char *def);
/* Boolean member (case-insensitive); def if absent. Accepts true/false and "true"/"false". */
bool jsonu_bool_ci(json_object *obj, const char *key, bool def);
/* Text of a value used as an id: strings as they are, numbers formatted,
 * anything else (null, absent, objects) as "". Borrowed from v or a
 * thread-unsafe static buffer valid until the next call. */
const char *jsonu_id_text(json_object *v);
/* Serialises without escaping '/' and without spaces (borrowed from obj). */
const char *jsonu_to_string(json_object *obj, size_t *len);

/* Appends s as a JSON string literal (quoted and escaped). */
struct Buf;
void jsonu_put_string(struct Buf *b, const char *s);

#endif
