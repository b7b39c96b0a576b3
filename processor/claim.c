#include "processor/claim.h"

#include <stdlib.h>
#include <string.h>

#include "common/jobq.h"
#include "common/xalloc.h"

void claim_plan_init(ClaimPlan *c, int nparts, int claim_batch)
{
    memset(c, 0, sizeof *c);
    c->nparts = nparts;
    c->claim_batch = claim_batch;
    size_t n = (size_t)nparts;
    c->cursor = xcalloc(n, sizeof(int64_t));
    c->next = xcalloc(n, sizeof(int64_t));
    c->epoch = xcalloc(n, sizeof(int64_t));
    c->limit = xcalloc(n, sizeof(int));
    c->got = xcalloc(n, sizeof(int));
    c->active = xcalloc(n, sizeof(int));
    c->scratch_cursor = xcalloc(n, sizeof(int64_t));
    c->scratch_limit = xcalloc(n, sizeof(int));
}

void claim_plan_deinit(ClaimPlan *c)
{
    free(c->cursor);
    free(c->next);
    free(c->epoch);
    free(c->limit);
    free(c->got);
    free(c->active);
    free(c->scratch_cursor);
    free(c->scratch_limit);
    memset(c, 0, sizeof *c);
}

static int base_limit(const ClaimPlan *c)
{
    return c->claim_batch / (c->nactive > 0 ? c->nactive : 1) / 2 + 4;
}

void claim_plan_set_cursor(ClaimPlan *c, int part, int64_t cursor, int64_t epoch)
{
    if (part < 0 || part >= c->nparts)
        return;
    c->cursor[part] = cursor;
    c->next[part] = cursor;
    c->epoch[part] = epoch;
}

bool claim_plan_is_loaded(const ClaimPlan *c, int part, int64_t epoch)
{
    return part >= 0 && part < c->nparts && epoch != 0 && c->epoch[part] == epoch;
}

void claim_plan_forget(ClaimPlan *c)
{
    memset(c->epoch, 0, sizeof(int64_t) * (size_t)c->nparts);
    c->nactive = 0;
}

bool claim_plan_has(const ClaimPlan *c, int part)
{
    for (int i = 0; i < c->nactive; i++)
        if (c->active[i] == part)
            return true;
    return false;
}

void claim_plan_set_active(ClaimPlan *c, const int *parts, int n)
{
    /* which partitions were in the set (got[] is scratch between batches) */
    memset(c->got, 0, sizeof(int) * (size_t)c->nparts);
    for (int i = 0; i < c->nactive; i++)
        c->got[c->active[i]] = 1;
    memmove(c->active, parts, sizeof(int) * (size_t)n);
    c->nactive = n;
    int base = base_limit(c);
    for (int i = 0; i < n; i++) {
        int p = parts[i];
        if (!c->got[p] || c->limit[p] < base)
            c->limit[p] = base;
    }
    memset(c->got, 0, sizeof(int) * (size_t)c->nparts);
}

void claim_plan_format(const ClaimPlan *c, Buf *sql)
{
    for (int i = 0; i < c->nactive; i++) {
        c->scratch_cursor[i] = c->cursor[c->active[i]];
        c->scratch_limit[i] = c->limit[c->active[i]];
    }
    jobq_format_claim(sql, JOBQ_GW, c->active, c->scratch_cursor, c->nactive, c->scratch_limit, 0);
}

void claim_plan_begin(ClaimPlan *c)
{
    for (int i = 0; i < c->nactive; i++) {
        int p = c->active[i];
        c->next[p] = c->cursor[p];
        c->got[p] = 0;
    }
}

void claim_plan_end(ClaimPlan *c)
{
    int base = base_limit(c);
    int full = 0;
    for (int i = 0; i < c->nactive; i++) {
        int p = c->active[i];
        full += c->got[p] >= c->limit[p];
    }
    int cap = c->claim_batch / (full > 0 ? full : 1);
    if (cap < base)
        cap = base;
    for (int i = 0; i < c->nactive; i++) {
        int p = c->active[i];
        if (c->got[p] >= c->limit[p])
            c->limit[p] = c->limit[p] * 2 > cap ? cap : c->limit[p] * 2;
        else
            c->limit[p] = base;
    }
}

int claim_plan_moves(const ClaimPlan *c, int *parts, int64_t *old_ids, int64_t *new_ids)
{
    int n = 0;
    for (int i = 0; i < c->nactive; i++) {
        int p = c->active[i];
        if (c->next[p] != c->cursor[p]) {
            parts[n] = p;
            old_ids[n] = c->cursor[p];
            new_ids[n] = c->next[p];
            n++;
        }
    }
    return n;
}

void claim_plan_committed(ClaimPlan *c)
{
    for (int i = 0; i < c->nactive; i++) {
        int p = c->active[i];
        c->cursor[p] = c->next[p];
    }
}
