#include "common/jscan.h"

#include <stdlib.h>
#include <string.h>

static const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static const char *skip_string(const char *p, const char *end)
{
    /* p at the opening quote */
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
            continue;
        }
        if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* Returns the end of the value starting at p, or NULL. */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') {
                p = skip_string(p, end);
                if (p == NULL)
                    return NULL;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *s = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
           *p != '\r' && *p != '\t')
        p++;
    return p > s ? p : NULL;
}

JSpan jscan_doc(const char *text, size_t len)
{
    const char *end = text + len;
    const char *p = ws(text, end);
    while (end > p && (end[-1] == ' ' || end[-1] == '\n' || end[-1] == '\r' || end[-1] == '\t'))
        end--;
    JSpan s = {p, (size_t)(end - p)};
    return s;
}

static bool start(JSpan v, JIter *it, char open, char close)
{
    memset(it, 0, sizeof(*it));
    if (v.n < 2 || v.p[0] != open || v.p[v.n - 1] != close)
        return false;
    it->p = v.p + 1;
    it->end = v.p + v.n - 1;
    it->close = close;
    it->first = true;
    return true;
}

bool jscan_object(JSpan v, JIter *it)
{
    return start(v, it, '{', '}');
}

bool jscan_array(JSpan v, JIter *it)
{
    return start(v, it, '[', ']');
}

static bool sep(JIter *it)
{
    it->p = ws(it->p, it->end);
    if (it->p >= it->end)
        return false;
    if (!it->first) {
        if (*it->p != ',') {
            it->failed = true;
            return false;
        }
        it->p = ws(it->p + 1, it->end);
    }
    it->first = false;
    return true;
}

bool jscan_next_member(JIter *it, JSpan *key, JSpan *val)
{
    if (it->failed || it->p == NULL || !sep(it))
        return false;
    if (it->p >= it->end || *it->p != '"')
        goto bad;
    const char *k = it->p;
    const char *ke = skip_string(k, it->end);
    if (ke == NULL)
        goto bad;
    key->p = k + 1;
    key->n = (size_t)(ke - k - 2);
    const char *p = ws(ke, it->end);
    if (p >= it->end || *p != ':')
        goto bad;
    p = ws(p + 1, it->end);
    const char *ve = skip_value(p, it->end);
    if (ve == NULL)
        goto bad;
    val->p = p;
    val->n = (size_t)(ve - p);
    it->p = ve;
    return true;
bad:
    it->failed = true;
    return false;
}

bool jscan_next_element(JIter *it, JSpan *val)
{
    if (it->failed || it->p == NULL || !sep(it))
        return false;
    const char *ve = skip_value(it->p, it->end);
    if (ve == NULL) {
        it->failed = true;
        return false;
    }
    val->p = it->p;
    val->n = (size_t)(ve - it->p);
    it->p = ve;
    return true;
}

bool jscan_key_is(JSpan key, const char *s)
{
    size_t n = strlen(s);
    return key.n == n && memcmp(key.p, s, n) == 0;
}

bool jscan_get(JSpan v, const char *key, JSpan *val)
{
    JIter it;
    if (!jscan_object(v, &it))
        return false;
    JSpan k, x;
    while (jscan_next_member(&it, &k, &x))
        if (jscan_key_is(k, key)) {
            *val = x;
            return true;
        }
    return false;
}

char jscan_type(JSpan v)
{
    if (v.n == 0)
        return 0;
    switch (v.p[0]) {
    case '"': return 's';
    case '{': return 'o';
    case '[': return 'a';
    case 't': return 't';
    case 'f': return 'f';
    case 'n': return 'z';
    default: return (v.p[0] == '-' || (v.p[0] >= '0' && v.p[0] <= '9')) ? 'n' : 0;
    }
}

bool jscan_is_empty(JSpan v)
{
    char t = jscan_type(v);
    if (t == 'z' || t == 0)
        return true;
    if (t == 's')
        return v.n <= 2;
    if (t == 'o' || t == 'a') {
        const char *p = ws(v.p + 1, v.p + v.n - 1);
        return p >= v.p + v.n - 1;
    }
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4)
        return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return false;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return true;
}

static void put_utf8(Buf *out, unsigned cp)
{
    char b[4];
    if (cp < 0x80) {
        buf_putc(out, (char)cp);
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3f));
        buf_append(out, b, 2);
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | cp >> 12);
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        buf_append(out, b, 3);
    } else {
        b[0] = (char)(0xf0 | cp >> 18);
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        buf_append(out, b, 4);
    }
}

bool jscan_string(JSpan v, Buf *out)
{
    if (v.n < 2 || v.p[0] != '"' || v.p[v.n - 1] != '"')
        return false;
    const char *p = v.p + 1, *end = v.p + v.n - 1;
    const char *run = p;
    buf_reserve(out, v.n);
    while (p < end) {
        if (*p != '\\') {
            p++;
            continue;
        }
        buf_append(out, run, (size_t)(p - run));
        if (p + 1 >= end)
            return false;
        char c = p[1];
        p += 2;
        switch (c) {
        case '"': buf_putc(out, '"'); break;
        case '\\': buf_putc(out, '\\'); break;
        case '/': buf_putc(out, '/'); break;
        case 'b': buf_putc(out, '\b'); break;
        case 'f': buf_putc(out, '\f'); break;
        case 'n': buf_putc(out, '\n'); break;
        case 'r': buf_putc(out, '\r'); break;
        case 't': buf_putc(out, '\t'); break;
        case 'u': {
            unsigned cp;
            if (!hex4(p, end, &cp))
                return false;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                unsigned lo;
                if (hex4(p + 2, end, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            put_utf8(out, cp);
            break;
        }
        default: return false;
        }
        run = p;
    }
    buf_append(out, run, (size_t)(p - run));
    return true;
}

bool jscan_int(JSpan v, int64_t *out)
{
    if (jscan_type(v) != 'n' || v.n > 24)
        return false;
    char tmp[32];
    memcpy(tmp, v.p, v.n);
    tmp[v.n] = '\0';
    char *e = NULL;
    long long x = strtoll(tmp, &e, 10);
    if (e == tmp)
        return false;
    *out = x;
    return true;
}
