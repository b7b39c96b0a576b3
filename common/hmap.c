#include "common/hmap.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/xalloc.h"

#define TOMB ((char *)1)

/* Keys are often user-controlled (user ids, write keys): with a public hash
 * function a client could send ids that all collide and turn every lookup
 * into a linear scan. SipHash-1-3 with a per-process random key makes the
 * slots unpredictable. The key is module-private state, set once. */
static uint64_t g_sip_k0, g_sip_k1;
static int g_sip_ready;

static void sip_init(void)
{
    uint64_t k[2];
    if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
        k[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        k[1] = (uint64_t)clock() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&k;
    }
    g_sip_k0 = k[0];
    g_sip_k1 = k[1];
    g_sip_ready = 1;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

uint32_t hmap_hash(const char *s)
{
    if (!g_sip_ready)
        sip_init();
    size_t n = strlen(s);
    uint64_t v0 = 0x736f6d6570736575ull ^ g_sip_k0, v1 = 0x646f72616e646f6dull ^ g_sip_k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ g_sip_k0, v3 = 0x7465646279746573ull ^ g_sip_k1;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)n << 56;
    for (size_t k = 0; i + k < n; k++)
        b |= (uint64_t)p[i + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    uint64_t h = v0 ^ v1 ^ v2 ^ v3;
    return (uint32_t)(h ^ (h >> 32));
}

void hmap_init(HMap *m)
{
    memset(m, 0, sizeof(*m));
}

void hmap_deinit(HMap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != TOMB)
            free(m->slots[i].key);
    free(m->slots);
    hmap_init(m);
}

static HMapEntry *find(const HMap *m, const char *key, uint32_t h)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        HMapEntry *e = &m->slots[i];
        if (e->key == NULL)
            return NULL;
        if (e->key != TOMB && e->hash == h && strcmp(e->key, key) == 0)
            return e;
    }
}

static void grow(HMap *m)
{
    HMapEntry *old = m->slots;
    size_t oldcap = m->cap;
    m->cap = oldcap ? oldcap * 2 : 16;
    if (m->len * 4 < oldcap)
        m->cap = oldcap; /* mostly tombstones: rehash in place size */
    m->slots = xcalloc(m->cap, sizeof(HMapEntry));
    m->tombs = 0;
    for (size_t i = 0; i < oldcap; i++) {
        HMapEntry *e = &old[i];
        if (e->key == NULL || e->key == TOMB)
            continue;
        size_t j = e->hash & (m->cap - 1);
        while (m->slots[j].key != NULL)
            j = (j + 1) & (m->cap - 1);
        m->slots[j] = *e;
    }
    free(old);
}

void *hmap_get(const HMap *m, const char *key)
{
    HMapEntry *e = find(m, key, hmap_hash(key));
    return e ? e->value : NULL;
}

void *hmap_put(HMap *m, const char *key, void *value)
{
    uint32_t h = hmap_hash(key);
    HMapEntry *e = find(m, key, h);
    if (e != NULL) {
        void *prev = e->value;
        e->value = value;
        return prev;
    }
    if ((m->len + m->tombs + 1) * 4 >= m->cap * 3)
        grow(m);
    size_t i = h & (m->cap - 1);
    while (m->slots[i].key != NULL && m->slots[i].key != TOMB)
        i = (i + 1) & (m->cap - 1);
    if (m->slots[i].key == TOMB)
        m->tombs--;
    m->slots[i].key = xstrdup(key);
    m->slots[i].hash = h;
    m->slots[i].value = value;
    m->len++;
    return NULL;
}

void *hmap_del(HMap *m, const char *key)
{
    HMapEntry *e = find(m, key, hmap_hash(key));
    if (e == NULL)
        return NULL;
    void *v = e->value;
    free(e->key);
    e->key = TOMB;
    e->value = NULL;
    m->len--;
    m->tombs++;
    return v;
}

int hmap_next(const HMap *m, size_t *i, HMapEntry **e)
{
    while (*i < m->cap) {
        HMapEntry *s = &m->slots[(*i)++];
        if (s->key != NULL && s->key != TOMB) {
            *e = s;
            return 1;
        }
    }
    return 0;
}
