#include "processor/outputs.h"

#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "common/xalloc.h"

const char *outputs_reason_label(DeadReason r)
{
    switch (r) {
    case DEAD_TRANSFORMER:
        return "transformer";
    case DEAD_UNKNOWN_SOURCE:
        return "unknown_source";
    case DEAD_UNKNOWN_DESTINATION:
        return "unknown_destination";
    case DEAD_UNPARSABLE:
        return "unparsable";
    case DEAD_NO_TYPE:
        return "no_type";
    case DEAD_USER_TRANSFORMATION:
        return "user_transformation";
    case DEAD_ANSWER_TOO_LARGE:
        return "answer_too_large";
    case DEAD_NREASONS:
        break;
    }
    return "?";
}

void outputs_init(OutputList *l)
{
    memset(l, 0, sizeof(*l));
    buf_init(&l->text);
}

void outputs_reset(OutputList *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i].error);
    l->n = 0;
    buf_reset(&l->text);
}

void outputs_deinit(OutputList *l)
{
    outputs_reset(l);
    free(l->v);
    free(l->order);
    buf_deinit(&l->text);
    memset(l, 0, sizeof(*l));
}

static Output *add(OutputList *l, int job, int seq, const char *dest_id, OutputKind kind)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->v = xrealloc(l->v, sizeof(Output) * (size_t)l->cap);
    }
    Output *o = &l->v[l->n++];
    memset(o, 0, sizeof(*o));
    o->job = job;
    o->seq = seq;
    o->kind = kind;
    o->dest_id = dest_id;
    return o;
}

void outputs_add_job(OutputList *l, int job, int seq, const char *dest_id, bool batch,
                     const char *payload, size_t len)
{
    Output *o = add(l, job, seq, dest_id, batch ? OUTPUT_BATCH_RT : OUTPUT_RT);
    o->off = l->text.len;
    o->len = len;
    buf_append(&l->text, payload, len);
}

void outputs_add_filtered(OutputList *l, int job, int seq, const char *dest_id)
{
    add(l, job, seq, dest_id, OUTPUT_FILTERED);
}

void outputs_add_user_filtered(OutputList *l, int job, int seq, const char *dest_id)
{
    add(l, job, seq, dest_id, OUTPUT_FILTERED)->by_user = true;
}

void outputs_add_dead(OutputList *l, int job, int seq, const char *dest_id, int status,
                      DeadReason reason, const char *error, size_t error_len, const char *payload)
{
    Output *o = add(l, job, seq, dest_id, OUTPUT_DEAD);
    o->status = status;
    o->reason = reason;
    o->dead_payload = payload;
    o->error = utf8_dup_escaped(error, error_len, OUTPUTS_MAX_ERROR_BYTES);
}

const char *outputs_payload(const OutputList *l, const Output *o)
{
    return l->text.data + o->off;
}

const int *outputs_order(OutputList *l, int njobs)
{
    if (l->order_cap < l->n) {
        l->order_cap = l->n;
        l->order = xrealloc(l->order, sizeof(int) * (size_t)l->order_cap);
    }
    if (l->n == 0)
        return l->order;
    int maxseq = 0;
    for (int i = 0; i < l->n; i++)
        if (l->v[i].seq > maxseq)
            maxseq = l->v[i].seq;
    /* LSD radix sort with two stable counting passes: by seq, then by job */
    int nkeys = (njobs > maxseq + 1 ? njobs : maxseq + 1) + 1;
    int *count = xcalloc((size_t)nkeys, sizeof(int));
    int *tmp = xmalloc(sizeof(int) * (size_t)l->n);
    for (int i = 0; i < l->n; i++)
        count[l->v[i].seq + 1]++;
    for (int k = 1; k <= maxseq + 1; k++)
        count[k] += count[k - 1];
    for (int i = 0; i < l->n; i++)
        tmp[count[l->v[i].seq]++] = i;
    memset(count, 0, sizeof(int) * (size_t)nkeys);
    for (int i = 0; i < l->n; i++)
        count[l->v[i].job + 1]++;
    for (int k = 1; k <= njobs; k++)
        count[k] += count[k - 1];
    for (int i = 0; i < l->n; i++) {
        int idx = tmp[i];
        l->order[count[l->v[idx].job]++] = idx;
    }
    free(tmp);
    free(count);
    return l->order;
}
