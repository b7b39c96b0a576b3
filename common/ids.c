#include "common/ids.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>

#include "common/xalloc.h"

/* MD5 (RFC 1321), written from the specification. */
typedef struct Md5 {
    uint32_t a, b, c, d;
    uint64_t len;
    uint8_t block[64];
    size_t fill;
} Md5;

static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391};
static const uint8_t S[64] = {7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                              5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                              4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                              6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

static uint32_t rol(uint32_t x, int c)
{
    return (x << c) | (x >> (32 - c));
}

static void md5_block(Md5 *m, const uint8_t *p)
{
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[i * 4] | (uint32_t)p[i * 4 + 1] << 8 | (uint32_t)p[i * 4 + 2] << 16 |
               (uint32_t)p[i * 4 + 3] << 24;
    uint32_t a = m->a, b = m->b, c = m->c, d = m->d;
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        uint32_t t = d;
        d = c;
        c = b;
        b = b + rol(a + f + K[i] + w[g], S[i]);
        a = t;
    }
    m->a += a;
    m->b += b;
    m->c += c;
    m->d += d;
}

static void md5_update(Md5 *m, const uint8_t *p, size_t n)
{
    m->len += n;
    while (n > 0) {
        size_t take = 64 - m->fill < n ? 64 - m->fill : n;
        memcpy(m->block + m->fill, p, take);
        m->fill += take;
        p += take;
        n -= take;
        if (m->fill == 64) {
            md5_block(m, m->block);
            m->fill = 0;
        }
    }
}

void md5_digest(const void *data, size_t len, uint8_t out[16])
{
    Md5 m = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0, {0}, 0};
    md5_update(&m, data, len);
    uint64_t bits = m.len * 8;
    uint8_t pad = 0x80;
    md5_update(&m, &pad, 1);
    uint8_t zero = 0;
    while (m.fill != 56)
        md5_update(&m, &zero, 1);
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (8 * i));
    md5_update(&m, lenb, 8);
    uint32_t v[4] = {m.a, m.b, m.c, m.d};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            out[i * 4 + j] = (uint8_t)(v[i] >> (8 * j));
}

void ids_format_uuid(const uint8_t b[16], char out[UUID_STR_LEN])
{
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

void ids_uuid_v4(char out[UUID_STR_LEN])
{
    /* Module-private cache of random bytes: one getrandom per 256 UUIDs. */
    static uint8_t pool[4096];
    static size_t pos = sizeof(pool);
    if (pos + 16 > sizeof(pool)) {
        size_t got = 0;
        while (got < sizeof(pool)) {
            ssize_t n = getrandom(pool + got, sizeof(pool) - got, 0);
            ASSERT(n > 0);
            got += (size_t)n;
        }
        pos = 0;
    }
    uint8_t b[16];
    memcpy(b, pool + pos, 16);
    pos += 16;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    ids_format_uuid(b, out);
}

void ids_rudder_id(const char *user_id, const char *anonymous_id, char out[UUID_STR_LEN])
{
    size_t lu = strlen(user_id), la = strlen(anonymous_id);
    char stackbuf[512];
    char *s = lu + la + 2 <= sizeof(stackbuf) ? stackbuf : xmalloc(lu + la + 2);
    memcpy(s, user_id, lu);
    s[lu] = ':';
    memcpy(s + lu + 1, anonymous_id, la);
    uint8_t d[16];
    md5_digest(s, lu + la + 1, d);
    if (s != stackbuf)
        free(s);
    d[6] = (uint8_t)((d[6] & 0x0f) | 0x30);
    d[8] = (uint8_t)((d[8] & 0x3f) | 0x80);
    ids_format_uuid(d, out);
}

void ids_host_name(char *out, size_t size)
{
    if (size == 0)
        return;
    out[0] = '\0';
    if (gethostname(out, size - 1) != 0)
        out[0] = '\0';
    out[size - 1] = '\0';
    if (out[0] == '\0')
        snprintf(out, size, "unknown");
}
