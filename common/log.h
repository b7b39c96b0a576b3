/* key=value logging to stderr, one line per fact (STYLE §5).
 * Owns the only global of the process, g_log (level, service name, pid).
 * Every call site passes a constant snake_case event name and a printf-checked
 * "key=value ..." format; values with spaces go through log_quote(). */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum LogLevel { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } LogLevel;

typedef struct LogState {
    LogLevel level;
    char svc[32];
    int pid;
} LogState;

/* GLOBAL: the logger is reached from every module and from signal-free
 * callbacks; passing it through every call would add nothing. */
extern LogState g_log;

void log_init(const char *svc, LogLevel level);
/* Parses "debug"/"info"/"warn"/"error"; returns -1 if unknown. */
int log_level_parse(const char *s);
void log_write(LogLevel lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_enabled(lvl) ((lvl) >= g_log.level)
#define log_at(lvl, ev, ...)                                                                       \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_write(lvl, ev, __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(ev, ...) log_at(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...)  log_at(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_at(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_at(LOG_ERROR, ev, __VA_ARGS__)

/* Quotes a value for a log line into out (always terminated, may truncate):
 * wraps in double quotes and escapes quotes, backslashes and newlines.
 * Returns out so it can be used inline: log_warn("x", "err=%s", log_quote(b, sizeof b, msg)). */
const char *log_quote(char *out, size_t outsz, const char *s);

/* Copies a Postgres DSN with its password value replaced by "***". */
void log_mask_dsn(char *out, size_t outsz, const char *dsn);

#endif
