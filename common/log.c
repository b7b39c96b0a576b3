#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* GLOBAL: see log.h. */
LogState g_log = {LOG_INFO, "pintle", 0};

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *svc, LogLevel level)
{
    g_log.level = level;
    snprintf(g_log.svc, sizeof(g_log.svc), "%s", svc);
    g_log.pid = (int)getpid();
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void log_write(LogLevel lvl, const char *event, const char *fmt, ...)
{
    char line[4096];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s svc=%s pid=%d event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[lvl], g_log.svc,
                     g_log.pid, event);
    if (n < 0)
        return;
    if (fmt != NULL && fmt[0] != '\0' && (size_t)n < sizeof(line) - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if ((size_t)n >= sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line so lines from several processes never interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

const char *log_quote(char *out, size_t outsz, const char *s)
{
    size_t o = 0;
    if (outsz < 3) {
        if (outsz)
            out[0] = '\0';
        return out;
    }
    out[o++] = '"';
    for (const char *p = s ? s : ""; *p && o + 3 < outsz; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = *p;
        } else if (*p == '\n' || *p == '\r') {
            out[o++] = '\\';
            out[o++] = *p == '\n' ? 'n' : 'r';
        } else {
            out[o++] = *p;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

void log_mask_dsn(char *out, size_t outsz, const char *dsn)
{
    snprintf(out, outsz, "%s", dsn ? dsn : "");
    /* key=value form: password=secret */
    char *p = strstr(out, "password=");
    if (p != NULL) {
        char *v = p + strlen("password=");
        char *end = strchr(v, ' ');
        char rest[1024];
        snprintf(rest, sizeof(rest), "%s", end ? end : "");
        snprintf(v, outsz - (size_t)(v - out), "***%s", rest);
        return;
    }
    /* URI form: postgresql://user:secret@host/db */
    char *scheme = strstr(out, "://");
    if (scheme != NULL) {
        char *at = strchr(scheme + 3, '@');
        char *colon = strchr(scheme + 3, ':');
        if (at != NULL && colon != NULL && colon < at) {
            char rest[1024];
            snprintf(rest, sizeof(rest), "%s", at);
            snprintf(colon + 1, outsz - (size_t)(colon + 1 - out), "***%s", rest);
        }
    }
}
