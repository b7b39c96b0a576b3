/* jscan: a small JSON scanner that finds values inside a JSON text without
 * building a tree. Used on hot paths where a document is only picked apart
 * and its parts forwarded verbatim (the transformer's answers in the
 * processor, delivery payloads in the router): no allocation per node.
 * Spans point into the caller's text; nothing is owned. It checks structure
 * only as far as it needs to stay inside the buffer: callers get an error for
 * text that is not well-formed where they look. */
#ifndef COMMON_JSCAN_H
#define COMMON_JSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct JSpan {
    const char *p;
    size_t n;
} JSpan;

/* Iterates the members of an object or the elements of an array. */
typedef struct JIter {
    const char *p, *end;
    char close;
    bool first;
    bool failed;
} JIter;

/* Starts iterating v; false if v is not an object (or array). */
bool jscan_object(JSpan v, JIter *it);
bool jscan_array(JSpan v, JIter *it);
/* Next member: key is the raw text between the quotes (escapes not
 * decoded). Returns false at the end or on malformed text (it->failed). */
bool jscan_next_member(JIter *it, JSpan *key, JSpan *val);
bool jscan_next_element(JIter *it, JSpan *val);
/* Finds member key (raw comparison) in object v. */
bool jscan_get(JSpan v, const char *key, JSpan *val);

bool jscan_key_is(JSpan key, const char *s);
/* 's' string, 'n' number, 'o' object, 'a' array, 't'/'f' booleans, 'z' null, 0 invalid. */
char jscan_type(JSpan v);
/* An object or array with no members, or an empty string, or null. */
bool jscan_is_empty(JSpan v);
/* Appends the decoded value of a string span (escapes, \u and surrogate
 * pairs to UTF-8). False if v is not a valid string. */
bool jscan_string(JSpan v, Buf *out);
bool jscan_int(JSpan v, int64_t *out);
/* Trims surrounding whitespace of a whole document. */
JSpan jscan_doc(const char *text, size_t len);

#endif
