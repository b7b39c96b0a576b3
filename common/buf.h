/* Buf: a growable byte buffer owned by whoever embeds it.
 * Used to build COPY data, HTTP bodies and SQL. Always NUL-terminated. */
#ifndef COMMON_BUF_H
#define COMMON_BUF_H

#include <stddef.h>

typedef struct Buf {
    char *data;
    size_t len;
    size_t cap;
} Buf;

void buf_init(Buf *b);
void buf_deinit(Buf *b);
void buf_reset(Buf *b);
void buf_reserve(Buf *b, size_t extra);
void buf_append(Buf *b, const void *p, size_t n);
void buf_puts(Buf *b, const char *s);
void buf_putc(Buf *b, char c);
void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s escaped for a COPY text-format field (backslash, tab, newline, CR). */
void buf_put_copy_text(Buf *b, const char *s, size_t n);
/* Hands the data to the caller (caller frees) and leaves b empty. */
char *buf_take(Buf *b, size_t *len);

#endif
