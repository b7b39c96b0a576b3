/* Error values that carry context.
 * Owns nothing: an Err is caller-provided storage filled by the function that
 * knows the facts (STYLE §4). common/ fills errors and never logs them. */
#ifndef COMMON_ERR_H
#define COMMON_ERR_H

#include <stddef.h>

#define MUST_CHECK __attribute__((warn_unused_result))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

enum {
    ERR_OK = 0,
    ERR_INVALID = -1, /* bad input or configuration */
    ERR_IO = -2,      /* file or socket failure */
    ERR_DB = -3,      /* Postgres failure */
    ERR_AGAIN = -4,   /* try again later */
    ERR_NOTFOUND = -5,
    ERR_TOOBIG = -6,
    ERR_HTTP = -7,
};

typedef struct Err {
    int code;
    char msg[1024];
} Err;

/* Sets err (if not NULL) and returns code, so callers can `return err_set(...)`. */
int err_set(Err *err, int code, const char *fmt, ...) PRINTF_LIKE(3, 4);
/* Prefixes err->msg with "<prefix>: "; returns err->code. */
int err_prefix(Err *err, const char *fmt, ...) PRINTF_LIKE(2, 3);
void err_clear(Err *err);

#endif
