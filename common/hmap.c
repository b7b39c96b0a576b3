#include "common/hmap.h"

#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

#define TOMB ((char *)1)

uint32_t hmap_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
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
