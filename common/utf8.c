#include "common/utf8.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Length of the well-formed character starting at s (n bytes available),
 * or 0 when the bytes there are not one (Unicode Table 3-7). */
static size_t char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xc2 || c > 0xf4)
        return 0;
    if (c < 0xe0) {
        if (n < 2 || (s[1] & 0xc0) != 0x80)
            return 0;
        return 2;
    }
    if (c < 0xf0) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0 && s[1] < 0xa0)
            return 0; /* overlong */
        if (c == 0xed && s[1] > 0x9f)
            return 0; /* surrogate */
        return 3;
    }
    if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
        return 0;
    if (c == 0xf0 && s[1] < 0x90)
        return 0; /* overlong */
    if (c == 0xf4 && s[1] > 0x8f)
        return 0; /* above U+10FFFF */
    return 4;
}

bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs are the common case: skip eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            __builtin_memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        size_t l = char_len(p + i, n - i);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    size_t i = max;
    /* back over continuation bytes to the start of the character at max */
    while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80)
        i--;
    return i;
}

void utf8_put_escaped(Buf *b, const char *s, size_t n, size_t max)
{
    if (max > 0)
        n = utf8_cut(s, n, max);
    const unsigned char *p = (const unsigned char *)s;
    buf_reserve(b, n);
    size_t start = 0, i = 0;
    while (i < n) {
        size_t l = p[i] == 0 ? 0 : char_len(p + i, n - i);
        if (l > 0) {
            i += l;
            continue;
        }
        buf_append(b, s + start, i - start);
        char esc[5];
        snprintf(esc, sizeof esc, "\\x%02x", p[i]);
        buf_append(b, esc, 4);
        i++;
        start = i;
    }
    buf_append(b, s + start, n - start);
}

char *utf8_dup_escaped(const char *s, size_t n, size_t max)
{
    if (s == NULL)
        return NULL;
    Buf b;
    buf_init(&b);
    utf8_put_escaped(&b, s, n, max);
    return buf_take(&b, NULL);
}
