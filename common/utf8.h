/* UTF-8 checks and safe cuts for text that reaches Postgres (a UTF8
 * database refuses invalid bytes and NUL, failing the whole statement).
 * Owns nothing; pure functions over caller buffers. Used by the gateway
 * (validation at ingest), the processor and router (error and response
 * texts they store). */
#ifndef COMMON_UTF8_H
#define COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

/* True when s[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates U+D800..U+DFFF, nothing above U+10FFFF). NUL bytes are valid
 * UTF-8; callers that store text check for them separately. */
bool utf8_valid(const char *s, size_t n);

/* Length of the longest prefix of s[0..n) that is at most max bytes and
 * does not end inside a character. For valid UTF-8 the prefix is valid. */
size_t utf8_cut(const char *s, size_t n, size_t max);

/* Appends s[0..n) to b with every byte that is not part of a well-formed
 * character, and every NUL, written as the four characters \xHH
 * (backslashes are copied as they are: the escape is for reading, not for
 * round trips). The result is valid UTF-8 without NUL, so it can be stored
 * as Postgres text. At most max input bytes are taken, cut on a character
 * boundary (max 0: no limit). */
void utf8_put_escaped(Buf *b, const char *s, size_t n, size_t max);

/* Heap copy of s through utf8_put_escaped; caller frees. NULL for NULL. */
char *utf8_dup_escaped(const char *s, size_t n, size_t max);

#endif
