#include "gateway/mshare.h"

#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/xalloc.h"

/* Room per worker: a snapshot is ~300 bytes per series; pages are only
 * used as far as written (MAP_NORESERVE). */
#define MSHARE_SLOT_BYTES (4u << 20)

typedef struct Slot {
    uint64_t seq; /* odd while the writer is in the slot */
    uint64_t len;
    char data[];
} Slot;

struct MetricsShare {
    int workers;
    size_t slot_bytes;
    char *base;
};

static Slot *slot(const MetricsShare *sh, int worker)
{
    return (Slot *)(sh->base + (size_t)worker * sh->slot_bytes);
}

MetricsShare *mshare_create(int workers)
{
    size_t bytes = (size_t)workers * MSHARE_SLOT_BYTES;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    MetricsShare *sh = xcalloc(1, sizeof *sh);
    sh->workers = workers;
    sh->slot_bytes = MSHARE_SLOT_BYTES;
    sh->base = p;
    return sh;
}

void mshare_destroy(MetricsShare *sh)
{
    if (sh == NULL)
        return;
    munmap(sh->base, (size_t)sh->workers * sh->slot_bytes);
    free(sh);
}

int mshare_workers(const MetricsShare *sh)
{
    return sh->workers;
}

bool mshare_publish(MetricsShare *sh, int worker, const char *data, size_t len)
{
    if (worker < 0 || worker >= sh->workers || len > sh->slot_bytes - sizeof(Slot))
        return false;
    Slot *s = slot(sh, worker);
    uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    if (seq & 1)
        seq++; /* a predecessor died mid-write: start from an even number */
    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(s->data, data, len);
    __atomic_store_n(&s->len, (uint64_t)len, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
    return true;
}

bool mshare_read(const MetricsShare *sh, int worker, Buf *out)
{
    if (worker < 0 || worker >= sh->workers)
        return false;
    Slot *s = slot(sh, worker);
    size_t keep = out->len;
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq == 0)
            return false; /* nothing published yet */
        if (seq & 1) {
            sched_yield();
            continue;
        }
        uint64_t len = __atomic_load_n(&s->len, __ATOMIC_RELAXED);
        if (len > sh->slot_bytes - sizeof(Slot))
            continue;
        out->len = keep;
        buf_append(out, s->data, (size_t)len);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq)
            return true;
    }
    out->len = keep;
    return false;
}
