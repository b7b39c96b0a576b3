/* Warehouse data types (see wh_types.h). A column's type is decided by the
 * first value that creates it; later values are judged against it here, as
 * rudder-server's HandleSchemaChange does: a string column takes anything
 * as text, int and float convert into each other, json takes anything,
 * every other mismatch (e.g. "abc" into a bigint or a timestamptz column)
 * is a discard. */
#include "batchrouter/wh_types.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonu.h"
#include "common/xalloc.h"

const char *wh_type_name(WhType t)
{
    static const char *const names[] = {"string",   "int",  "float", "boolean",
                                        "datetime", "json", "other"};
    return names[t];
}

const char *wh_type_pg(WhType t)
{
    static const char *const pg[] = {"text",        "bigint", "numeric", "boolean",
                                     "timestamptz", "jsonb",  "text"};
    return pg[t];
}

static bool starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

WhType wh_type_from_pg(const char *t)
{
    if (strcmp(t, "text") == 0 || starts(t, "character"))
        return WH_TYPE_STRING;
    if (strcmp(t, "bigint") == 0 || strcmp(t, "integer") == 0 || strcmp(t, "smallint") == 0)
        return WH_TYPE_INT;
    if (starts(t, "numeric") || strcmp(t, "double precision") == 0 || strcmp(t, "real") == 0)
        return WH_TYPE_FLOAT;
    if (strcmp(t, "boolean") == 0)
        return WH_TYPE_BOOLEAN;
    if (starts(t, "timestamp"))
        return WH_TYPE_DATETIME;
    if (strcmp(t, "jsonb") == 0 || strcmp(t, "json") == 0)
        return WH_TYPE_JSON;
    return WH_TYPE_OTHER;
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil) and back. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int month_days(int y, int m)
{
    static const int n[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : n[m - 1];
}

bool wh_timestamp_parse(const char *s, char out[32])
{
    const char *p = s;
    if (*p == '+')
        p++;
    else if (*p == '-')
        return false; /* a negative year is before 0001-01-01 */
    int y, mo, d, h = 0, mi = 0, se = 0, ms = 0, off_min = 0;
    if (!digits(p, 4, &y) || p[4] != '-' || !digits(p + 5, 2, &mo) || p[7] != '-' ||
        !digits(p + 8, 2, &d))
        return false;
    p += 10;
    if (mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo))
        return false;
    if (*p != '\0') {
        if (*p != 'T' && *p != ' ' && *p != '\t')
            return false;
        p++;
        if (!digits(p, 2, &h) || p[2] != ':' || !digits(p + 3, 2, &mi) || h > 23 || mi > 59)
            return false;
        p += 5;
        if (*p == ':') {
            if (!digits(p + 1, 2, &se) || se > 59)
                return false;
            p += 3;
            if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                    return false;
                int nd = 0;
                for (; *p >= '0' && *p <= '9'; p++, nd++)
                    if (nd < 3)
                        ms = ms * 10 + (*p - '0');
                for (; nd < 3; nd++)
                    ms *= 10;
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1, oh, om = 0;
            p++;
            if (!digits(p, 2, &oh) || oh > 23)
                return false;
            p += 2;
            if (*p == ':')
                p++;
            if (*p != '\0') {
                if (!digits(p, 2, &om) || om > 59)
                    return false;
                p += 2;
            }
            off_min = sign * (oh * 60 + om);
        }
        if (*p != '\0')
            return false;
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off_min * 60;
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t sod = secs - days * 86400;
    int64_t yy;
    civil_from_days(days, &yy, &mo, &d);
    if (yy < 1 || yy > 9999)
        return false;
    snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (int)yy, mo, d, (int)(sod / 3600),
             (int)(sod / 60 % 60), (int)(sod % 60), ms);
    return true;
}

static bool is_blank(json_object *j)
{
    if (j == NULL)
        return true;
    switch (json_object_get_type(j)) {
    case json_type_null:
        return true;
    case json_type_string:
        return json_object_get_string_len(j) == 0;
    case json_type_array:
        /* lodash toString: [] and [null] print as "" */
        return json_object_array_length(j) == 0 ||
               (json_object_array_length(j) == 1 && is_blank(json_object_array_get_idx(j, 0)));
    default:
        return false;
    }
}

bool wh_value_infer(json_object *j, WhValue *v)
{
    char tmp[64];
    v->is_json = false;
    if (is_blank(j))
        return false;
    switch (json_object_get_type(j)) {
    case json_type_boolean:
        v->type = WH_TYPE_BOOLEAN;
        v->text = xstrdup(json_object_get_boolean(j) ? "true" : "false");
        return true;
    case json_type_int: {
        int64_t n = json_object_get_int64(j);
        const char *orig = json_object_to_json_string(j);
        snprintf(tmp, sizeof tmp, "%lld", (long long)n);
        if (strcmp(orig, tmp) != 0) { /* beyond int64: json-c saturated it */
            v->type = WH_TYPE_FLOAT;
            v->text = xstrdup(orig);
        } else {
            v->type = WH_TYPE_INT;
            v->text = xstrdup(tmp);
        }
        return true;
    }
    case json_type_double: {
        double d = json_object_get_double(j);
        /* JavaScript's Number.isInteger: 5.0 is an int; kept within bigint */
        if (isfinite(d) && d == trunc(d) && fabs(d) < 9.2e18) {
            v->type = WH_TYPE_INT;
            snprintf(tmp, sizeof tmp, "%lld", (long long)d);
            v->text = xstrdup(tmp);
        } else {
            v->type = WH_TYPE_FLOAT;
            v->text = xstrdup(json_object_to_json_string(j));
        }
        return true;
    }
    case json_type_string: {
        const char *s = json_object_get_string(j);
        char ts[32];
        if (wh_timestamp_parse(s, ts)) {
            v->type = WH_TYPE_DATETIME;
            v->text = xstrdup(ts);
        } else {
            v->type = WH_TYPE_STRING;
            v->text = xstrdup(s);
        }
        return true;
    }
    case json_type_array: {
        size_t n;
        v->type = WH_TYPE_STRING;
        v->is_json = true;
        v->text = xstrdup(jsonu_to_string(j, &n));
        return true;
    }
    default:
        return false;
    }
}

WhFit wh_value_fit(WhType column, const WhValue *v, Buf *out)
{
    if (column == v->type || column == WH_TYPE_STRING) {
        buf_puts(out, v->text);
        return WH_FIT_KEEP;
    }
    if (column == WH_TYPE_FLOAT && v->type == WH_TYPE_INT) {
        buf_puts(out, v->text);
        return WH_FIT_KEEP;
    }
    if (column == WH_TYPE_INT && v->type == WH_TYPE_FLOAT) {
        double d = strtod(v->text, NULL);
        if (!isfinite(d) || fabs(d) >= 9.2e18)
            return WH_FIT_DISCARD;
        buf_printf(out, "%lld", (long long)trunc(d));
        return WH_FIT_KEEP;
    }
    if (column == WH_TYPE_JSON) {
        if (v->type == WH_TYPE_STRING && v->is_json)
            buf_puts(out, v->text);
        else if (v->type == WH_TYPE_STRING || v->type == WH_TYPE_DATETIME)
            jsonu_put_string(out, v->text);
        else
            buf_puts(out, v->text);
        return WH_FIT_KEEP;
    }
    return WH_FIT_DISCARD;
}
