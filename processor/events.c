#include "processor/events.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/jsonu.h"

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool events_parse_time(const char *s, int64_t *ms)
{
    if (s == NULL || strlen(s) < 19)
        return false;
    int Y, M, D, h, m, sec;
    if (!digits(s, 4, &Y) || s[4] != '-' || !digits(s + 5, 2, &M) || s[7] != '-' ||
        !digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &m) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return false;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return false;
    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        while (isdigit((unsigned char)*p)) {
            if (n < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return false;
        for (; n < 3; n++)
            frac_ms *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om))
            return false;
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p != '\0')
        return false;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + frac_ms;
    return true;
}

void events_format_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int rem = (int)(ms - (int64_t)t * 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", rem);
}

static bool field_time(json_object *ev, const char *key, int64_t *ms)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(ev, key, &v) || !json_object_is_type(v, json_type_string))
        return false;
    return events_parse_time(json_object_get_string(v), ms);
}

static void set_time(json_object *ev, const char *key, int64_t ms)
{
    char buf[32];
    events_format_time(ms, buf);
    json_object_object_add(ev, key, json_object_new_string(buf));
}

void events_normalize_times(json_object *ev, int64_t now_ms)
{
    int64_t received, original, sent;
    if (!field_time(ev, "receivedAt", &received))
        received = now_ms;
    if (!field_time(ev, "originalTimestamp", &original) && !field_time(ev, "timestamp", &original))
        original = received;
    if (!field_time(ev, "sentAt", &sent))
        sent = received;
    int64_t ts = received - (sent - original);
    if (ts > now_ms)
        ts = now_ms;
    set_time(ev, "receivedAt", received);
    set_time(ev, "originalTimestamp", original);
    set_time(ev, "sentAt", sent);
    set_time(ev, "timestamp", ts);
}

bool events_dest_wanted(const WsDestination *d, json_object *ev, const char *type)
{
    if (!d->enabled || !d->processor_enabled)
        return false;
    if (type == NULL || !ws_dest_supports(d, type))
        return false;
    json_object *integ = NULL;
    if (!json_object_object_get_ex(ev, "integrations", &integ) ||
        !json_object_is_type(integ, json_type_object))
        return true;
    json_object *v = jsonu_get_ci(integ, d->def_display_name);
    if (v == NULL)
        v = jsonu_get_ci(integ, d->def_name);
    if (v != NULL) {
        /* an object (destination-specific options) means included */
        if (json_object_is_type(v, json_type_boolean))
            return json_object_get_boolean(v);
        return !json_object_is_type(v, json_type_null);
    }
    json_object *all = jsonu_get_ci(integ, "All");
    if (all != NULL && json_object_is_type(all, json_type_boolean))
        return json_object_get_boolean(all);
    return true;
}
