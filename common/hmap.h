/* HMap: an open-addressing hash map from NUL-terminated string keys to
 * pointers. Owns copies of its keys, never the values. */
#ifndef COMMON_HMAP_H
#define COMMON_HMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct HMapEntry {
    char *key;
    void *value;
    uint32_t hash;
} HMapEntry;

typedef struct HMap {
    HMapEntry *slots;
    size_t cap; /* power of two */
    size_t len;
    size_t tombs;
} HMap;

void hmap_init(HMap *m);
void hmap_deinit(HMap *m);
void *hmap_get(const HMap *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *hmap_put(HMap *m, const char *key, void *value);
/* Removes key; returns its value or NULL. */
void *hmap_del(HMap *m, const char *key);
/* Keyed hash (SipHash-1-3, random key per process): slots cannot be
 * predicted by whoever chooses the keys. Not stable across processes. */
uint32_t hmap_hash(const char *s);

/* Iteration: for (size_t i = 0; hmap_next(m, &i, &e);) ... */
int hmap_next(const HMap *m, size_t *i, HMapEntry **e);

#endif
