/* Warehouse names (see wh_names.h). The rules are RudderStack's, so a
 * warehouse loaded by pintle has the tables and columns a RudderStack
 * warehouse would have for the same events:
 *   - transformName keeps ASCII letters and digits; lodash's snakeCase then
 *     splits words at case changes and between letters and digits;
 *   - Postgres names are cut to 63 bytes, lower-cased, and reserved words
 *     get a "_" prefix (safeColumnName / safeTableName);
 *   - event tables that would shadow the tables RudderStack itself creates
 *     get a "_" prefix (excludeRudderCreatedTableNames). */
#include "batchrouter/wh_names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* rudder-transformer src/warehouse/config/ReservedKeywords.json, POSTGRES
 * (sorted for bsearch). */
static const char *const reserved[] = {
    "ALL",
    "ANALYSE",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASYMMETRIC",
    "AUTHORIZATION",
    "BETWEEN",
    "BINARY",
    "BOTH",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DEFAULT",
    "DEFERRABLE",
    "DESC",
    "DISTINCT",
    "DO",
    "ELSE",
    "END",
    "EXCEPT",
    "FALSE",
    "FOR",
    "FOREIGN",
    "FREEZE",
    "FROM",
    "FULL",
    "GRANT",
    "GROUP",
    "HAVING",
    "ILIKE",
    "IN",
    "INITIALLY",
    "INNER",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "NATURAL",
    "NEW",
    "NOT",
    "NOTNULL",
    "NULL",
    "OFF",
    "OFFSET",
    "OLD",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVERLAPS",
    "PLACING",
    "PRIMARY",
    "REFERENCES",
    "RIGHT",
    "SELECT",
    "SESSION_USER",
    "SIMILAR",
    "SOME",
    "SYMMETRIC",
    "TABLE",
    "THEN",
    "TO",
    "TRAILING",
    "TRUE",
    "UNION",
    "UNIQUE",
    "USER",
    "USING",
    "VERBOSE",
    "WHEN",
    "WHERE",
};

/* Tables RudderStack creates itself: an event of the same name gets "_".
 * pintle adds its ledger and the discards table, so that no event's rows
 * can land in either (RudderStack's list stops at identifies). */
static const char *const rudder_tables[] = {
    "tracks",   "pages", "screens",    "aliases",         "groups",
    "accounts", "users", "identifies", "rudder_discards", "pintle_loads"};

static int cmp_ci(const void *a, const void *b)
{
    return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

bool wh_name_is_reserved(const char *name)
{
    return bsearch(&name, reserved, sizeof reserved / sizeof reserved[0], sizeof reserved[0],
                   cmp_ci) != NULL;
}

static bool is_up(char c)
{
    return c >= 'A' && c <= 'Z';
}
static bool is_low(char c)
{
    return c >= 'a' && c <= 'z';
}
static bool is_dig(char c)
{
    return c >= '0' && c <= '9';
}
static bool is_alnum(char c)
{
    return is_up(c) || is_low(c) || is_dig(c);
}
static char lower(char c)
{
    return is_up(c) ? (char)(c - 'A' + 'a') : c;
}

/* A bounded output string. */
typedef struct Out {
    char *p;
    size_t len, cap;
} Out;

static void out_putc(Out *o, char c)
{
    if (o->len + 1 < o->cap)
        o->p[o->len++] = c;
    o->p[o->len] = '\0';
}

static void out_word(Out *o, const char *w, size_t n)
{
    if (o->len > 0 && o->p[o->len - 1] != '_')
        out_putc(o, '_');
    for (size_t i = 0; i < n; i++)
        out_putc(o, lower(w[i]));
}

/* Length of an ordinal (lodash's rsOrdLower / rsOrdUpper) starting at the
 * digit run s[0..nd) of a segment of length n, or 0: "1st", "22nd", "3RD",
 * "14th" (the last digit agrees with the suffix), followed by the end, an
 * upper-case letter (lower-case suffix) or a lower-case one (upper-case). */
static size_t ordinal_len(const char *s, size_t nd, size_t n)
{
    if (nd + 2 > n)
        return 0;
    char d = s[nd - 1], a = s[nd], b = s[nd + 1];
    bool low = is_low(a) && is_low(b), up = is_up(a) && is_up(b);
    if (!low && !up)
        return 0;
    char x = lower(a), y = lower(b);
    bool ok = (x == 's' && y == 't' && d == '1') || (x == 'n' && y == 'd' && d == '2') ||
              (x == 'r' && y == 'd' && d == '3') ||
              (x == 't' && y == 'h' && d != '1' && d != '2' && d != '3');
    if (!ok)
        return 0;
    if (nd + 2 < n) {
        char next = s[nd + 2];
        if (low ? !is_up(next) : !is_low(next))
            return 0;
    }
    return nd + 2;
}

/* lodash snakeCase of one run of letters and digits. */
static void snake_segment(Out *o, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        if (is_dig(s[i])) {
            while (j < n && is_dig(s[j]))
                j++;
            size_t ord = ordinal_len(s + i, j - i, n - i);
            if (ord > 0)
                j = i + ord;
        } else if (is_up(s[i]) && j < n && is_low(s[j])) {
            while (j < n && is_low(s[j]))
                j++;
        } else if (is_up(s[i])) {
            while (j < n && is_up(s[j]))
                j++;
            /* "HTMLParser": the last capital starts the next word */
            if (j < n && is_low(s[j]) && j - i >= 2)
                j--;
        } else {
            while (j < n && is_low(s[j]))
                j++;
        }
        out_word(o, s + i, j - i);
        i = j;
    }
}

void wh_name_transform(const char *in, size_t max, char *out, size_t outsz)
{
    Out o = {out, 0, outsz};
    out[0] = '\0';
    /* leading underscores survive, so "_timestamp" can escape a rudder column */
    size_t lead = strspn(in, "_");
    for (size_t k = 0; k < lead; k++)
        out_putc(&o, '_');
    size_t base = o.len;
    const char *p = in;
    bool first = true;
    while (*p) {
        while (*p && !is_alnum(*p))
            p++;
        const char *q = p;
        while (*q && is_alnum(*q))
            q++;
        if (q > p) {
            if (!first && o.len > base)
                out_putc(&o, '_');
            snake_segment(&o, p, (size_t)(q - p));
            first = false;
        }
        p = q;
    }
    if (o.len > 0 && is_dig(out[0])) {
        memmove(out + 1, out, o.len + 1 < outsz ? o.len + 1 : outsz - 1);
        out[0] = '_';
        o.len = o.len + 1 < outsz ? o.len + 1 : outsz - 1;
        out[o.len] = '\0';
    }
    if (max > 0 && o.len > max)
        out[max] = '\0';
}

static void safe_name(char *s, size_t outsz)
{
    s[WH_NAME_MAX] = '\0';
    for (char *p = s; *p; p++)
        *p = lower(*p);
    if (s[0] != '\0' && wh_name_is_reserved(s)) {
        size_t n = strlen(s);
        if (n + 2 <= outsz) {
            memmove(s + 1, s, n + 1);
            s[0] = '_';
        }
    }
}

void wh_name_column(const char *in, char *out, size_t outsz)
{
    wh_name_transform(in, WH_NAME_MAX, out, outsz);
    if (out[0] != '\0')
        safe_name(out, outsz);
}

void wh_name_event_value(const char *event, char *out, size_t outsz)
{
    wh_name_transform(event, 0, out, outsz);
}

void wh_name_event_table(const char *event, char *out, size_t outsz)
{
    char value[WH_NAME_BUF];
    wh_name_event_value(event, value, sizeof value);
    if (value[0] == '\0') {
        out[0] = '\0';
        return;
    }
    wh_name_transform(value, WH_NAME_MAX, out, outsz);
    if (out[0] == '\0')
        return;
    safe_name(out, outsz);
    for (size_t i = 0; i < sizeof rudder_tables / sizeof rudder_tables[0]; i++) {
        if (strcmp(out, rudder_tables[i]) == 0) {
            size_t n = strlen(out);
            memmove(out + 1, out, n + 1);
            out[0] = '_';
            break;
        }
    }
}

void wh_name_namespace(const char *in, char *out, size_t outsz)
{
    Out o = {out, 0, outsz};
    out[0] = '\0';
    /* runs of letters and digits joined by "_", then strcase.ToSnake:
     * words split at lower->upper and at the end of an acronym */
    const char *p = in;
    while (*p) {
        while (*p && !is_alnum(*p))
            p++;
        const char *q = p;
        while (*q && is_alnum(*q))
            q++;
        if (q > p && o.len > 0)
            out_putc(&o, '_');
        for (const char *c = p; c < q; c++) {
            bool next_low = c + 1 < q && is_low(c[1]), next_up = c + 1 < q && is_up(c[1]);
            bool after_delim = o.len == 0 || out[o.len - 1] == '_';
            if (is_up(*c) && next_low && !after_delim) {
                out_putc(&o, '_');
                out_putc(&o, lower(*c));
            } else if (is_low(*c) && next_up && !after_delim) {
                out_putc(&o, *c);
                out_putc(&o, '_');
            } else {
                out_putc(&o, lower(*c));
            }
        }
        p = q;
    }
    if (o.len > 0 && is_dig(out[0]) && o.len + 2 <= outsz) {
        memmove(out + 1, out, o.len + 1);
        out[0] = '_';
        o.len++;
    }
    if (o.len == 0)
        snprintf(out, outsz, "%s", "stringempty");
    if (wh_name_is_reserved(out) && strlen(out) + 2 <= outsz) {
        memmove(out + 1, out, strlen(out) + 1);
        out[0] = '_';
    }
    out[outsz - 1 < WH_NAME_MAX ? outsz - 1 : WH_NAME_MAX] = '\0';
}
