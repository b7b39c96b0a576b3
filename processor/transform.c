/* Transformer requests of one batch (see transform.h).
 *
 * Chunks: the batch's events are grouped per destination (in gw job order,
 * so a chunk's job ids ascend) into chunks of processor.transform_chunk.
 * Each chunk's body is the JSON array of {message, metadata, destination};
 * every event's element is remembered by its byte range, so a chunk can be
 * split without rebuilding anything.
 *
 * User transformations (tf_batch_create_user) use the same chunks, limits,
 * retries and splits on /customTransform; their answers are matched back to
 * inputs as transform.h says. A chunk closes only between gw jobs (a job's
 * user-transformed fan-out stays in one request), and a split cuts at a job
 * boundary where it can, so the outputs of one event keep their order.
 *
 * Metadata: every event carries what RudderStack's JobMetadataT has where
 * pintle knows it (ids and names of source, destination and workspace,
 * source definition name and category, rudderId, receivedAt, the gw job's
 * createdAt, attemptNum 0, transformAt, the user transformation's ids,
 * secret null: OAuth is not supported); the per-destination part is
 * formatted once per batch.
 *
 * Concurrency: at most processor.max_inflight chunks are active (a request
 * in flight or a retry timer pending); a chunk that waits for its retry
 * keeps its place, so a failing transformer is not flooded.
 *
 * Answers are read whole up to processor.max_transformer_response_bytes
 * (httpc aborts beyond it). A larger answer splits the chunk in halves,
 * which are sent again; an event whose answer alone is too large becomes a
 * dead letter. So a big answer never costs the events next to it.
 *
 * Text that goes into dead letters (the transformer's error strings, the
 * body of a whole-request rejection) is cut on a character boundary and
 * escaped where it is not UTF-8 (outputs_add_dead). An answer body that is
 * not clean UTF-8 has each output checked before it is kept: an output
 * Postgres would refuse becomes a dead letter instead of failing the
 * batch's commit for ever. */
#include "processor/transform.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/hmap.h"
#include "common/jscan.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/utf8.h"
#include "common/xalloc.h"

/* Bytes of a whole-request rejection's body quoted in its dead letters. */
#define REJECTION_BODY_BYTES 200

typedef struct Slot {
    int job, seq;
    int64_t job_id;
    const char *text;       /* dead-letter payload (borrowed) */
    const char *message_id; /* borrowed; may be NULL */
    size_t off, end;        /* the event's element in the chunk's body */
} Slot;

typedef struct DestChunks DestChunks;

typedef struct Chunk {
    struct TfBatch *b;
    const DestChunks *dc;
    Buf body;
    Slot *slots;
    int n, cap;
    int attempt;
    struct event *retry_ev;
} Chunk;

/* Per destination of the batch: its capitalised JSON and URL, the open chunk. */
struct DestChunks {
    const WsDestination *d;
    char *dest_json;
    char *md_dest; /* the metadata members fixed per source and destination */
    char *url;
    Chunk *open;
};

struct TfBatch {
    struct event_base *base;
    const ProcessorConfig *cfg;
    Httpc *http;
    const TfMetrics *m;
    OutputList *outs;
    bool user; /* /customTransform */
    TfUserOutputFn on_output;
    void *output_arg;
    DeadReason fail_reason; /* of this batch's rejections */
    HMap by_dest;
    Chunk **chunks;
    int nchunks, capchunks;
    int next;       /* next chunk to send */
    int active;     /* chunks with a request in flight or a retry pending */
    int requests;   /* requests in flight */
    int unfinished; /* chunks without their answer yet, sent or not */
    bool abandoned, finished;
    struct event *done_ev;
    void (*done)(void *, bool);
    void *done_arg;
    Buf err; /* scratch for error texts */
};

static void pump(TfBatch *b);

TfBatch *tf_batch_create(struct event_base *base, const ProcessorConfig *cfg, Httpc *http,
                         const TfMetrics *m, OutputList *outs)
{
    TfBatch *b = xcalloc(1, sizeof(*b));
    b->base = base;
    b->cfg = cfg;
    b->http = http;
    b->m = m;
    b->outs = outs;
    b->fail_reason = DEAD_TRANSFORMER;
    hmap_init(&b->by_dest);
    buf_init(&b->err);
    return b;
}

TfBatch *tf_batch_create_user(struct event_base *base, const ProcessorConfig *cfg, Httpc *http,
                              const TfMetrics *m, OutputList *outs, TfUserOutputFn on_output,
                              void *arg)
{
    TfBatch *b = tf_batch_create(base, cfg, http, m, outs);
    b->user = true;
    b->on_output = on_output;
    b->output_arg = arg;
    b->fail_reason = DEAD_USER_TRANSFORMATION;
    return b;
}

static void chunk_free(Chunk *c)
{
    if (c->retry_ev)
        event_free(c->retry_ev);
    buf_deinit(&c->body);
    free(c->slots);
    free(c);
}

void tf_batch_destroy(TfBatch *b)
{
    if (b == NULL)
        return;
    for (int i = 0; i < b->nchunks; i++)
        chunk_free(b->chunks[i]);
    free(b->chunks);
    size_t it = 0;
    HMapEntry *e;
    while (hmap_next(&b->by_dest, &it, &e)) {
        DestChunks *dc = e->value;
        free(dc->dest_json);
        free(dc->md_dest);
        free(dc->url);
        free(dc);
    }
    hmap_deinit(&b->by_dest);
    if (b->done_ev)
        event_free(b->done_ev);
    buf_deinit(&b->err);
    free(b);
}

int tf_batch_chunks(const TfBatch *b)
{
    return b->nchunks;
}

/* The metadata members that are the same for every event of s and d. */
static char *format_md_dest(const WsSource *s, const WsDestination *d)
{
    Buf m;
    buf_init(&m);
    json_object *sdef = jsonu_get_ci(s->obj, "sourceDefinition");
    json_object *ddef = jsonu_get_ci(d->obj, "destinationDefinition");
    json_object *trs = jsonu_get_ci(d->obj, "transformations");
    json_object *tr0 =
        trs && json_object_is_type(trs, json_type_array) && json_object_array_length(trs) > 0
            ? json_object_array_get_idx(trs, 0)
            : NULL;
    buf_puts(&m, ",\"sourceId\":");
    jsonu_put_string(&m, s->id);
    buf_puts(&m, ",\"sourceName\":");
    jsonu_put_string(&m, s->name ? s->name : "");
    buf_puts(&m, ",\"sourceType\":");
    jsonu_put_string(&m, jsonu_str_ci(sdef, "name", ""));
    buf_puts(&m, ",\"sourceCategory\":");
    jsonu_put_string(&m, jsonu_str_ci(sdef, "category", ""));
    buf_puts(&m, ",\"sourceDefinitionId\":");
    jsonu_put_string(&m, jsonu_str_ci(sdef, "id", ""));
    buf_puts(&m, ",\"destinationId\":");
    jsonu_put_string(&m, d->id);
    buf_puts(&m, ",\"destinationName\":");
    jsonu_put_string(&m, d->name ? d->name : "");
    buf_puts(&m, ",\"destinationType\":");
    jsonu_put_string(&m, d->def_name);
    buf_puts(&m, ",\"destinationDefinitionId\":");
    jsonu_put_string(&m, jsonu_str_ci(ddef, "id", ""));
    buf_puts(&m, ",\"transformAt\":");
    jsonu_put_string(&m, d->transform_at);
    if (d->transformation_id != NULL) {
        buf_puts(&m, ",\"transformationId\":");
        jsonu_put_string(&m, jsonu_str_ci(tr0, "id", ""));
        buf_puts(&m, ",\"transformationVersionId\":");
        jsonu_put_string(&m, d->transformation_id);
    }
    buf_puts(&m, ",\"firstAttemptedAt\":\"\",\"attemptNum\":0,\"secret\":null");
    char *text = xstrndup(m.data, m.len);
    buf_deinit(&m);
    return text;
}

static Chunk *chunk_new(TfBatch *b, const DestChunks *dc, int cap)
{
    Chunk *c = xcalloc(1, sizeof(*c));
    c->b = b;
    c->dc = dc;
    c->cap = cap;
    c->slots = xmalloc(sizeof(Slot) * (size_t)cap);
    buf_init(&c->body);
    buf_putc(&c->body, '[');
    if (b->nchunks == b->capchunks) {
        b->capchunks = b->capchunks ? b->capchunks * 2 : 16;
        b->chunks = xrealloc(b->chunks, sizeof(Chunk *) * (size_t)b->capchunks);
    }
    b->chunks[b->nchunks++] = c;
    b->unfinished++;
    return c;
}

static DestChunks *dest_chunks(TfBatch *b, const WsSource *s, const WsDestination *d)
{
    /* keyed by the destination object: one chunk stream per entry of the snapshot */
    char key[32];
    snprintf(key, sizeof key, "%p", (const void *)d);
    DestChunks *dc = hmap_get(&b->by_dest, key);
    if (dc != NULL)
        return dc;
    dc = xcalloc(1, sizeof(*dc));
    dc->d = d;
    dc->dest_json = ws_destination_format(s, d);
    dc->md_dest = format_md_dest(s, d);
    if (b->user) {
        dc->url = xasprintf("%s/customTransform", b->cfg->transformer_url);
    } else {
        dc->url = xasprintf("%s/v0/destinations/%s", b->cfg->transformer_url, d->def_name);
        for (char *q = dc->url + strlen(b->cfg->transformer_url); *q; q++)
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q - 'A' + 'a');
    }
    hmap_put(&b->by_dest, key, dc);
    return dc;
}

/* An RFC 3339 UTC time with milliseconds, quoted ("" for 0). */
static void put_time(Buf *out, int64_t ms)
{
    if (ms <= 0) {
        buf_puts(out, "\"\"");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    buf_printf(out, "\"%s.%03dZ\"", ts, (int)(ms % 1000));
}

void tf_batch_add(TfBatch *b, const WsSource *s, const WsDestination *d, const TfEvent *ev)
{
    int chunk_max = b->cfg->transform_chunk;
    DestChunks *dc = dest_chunks(b, s, d);
    /* a chunk closes at transform_chunk events or once its request reaches
     * max_transformer_request_bytes, so large events cannot add up to a
     * request the transformer refuses */
    /* outputs of one gw job (a user transformation's fan-out) share a chunk */
    bool same_job =
        dc->open != NULL && dc->open->n > 0 && dc->open->slots[dc->open->n - 1].job == ev->job;
    if (dc->open == NULL ||
        (!same_job && (dc->open->n >= chunk_max ||
                       dc->open->body.len >= (size_t)b->cfg->max_transformer_request_bytes)))
        dc->open = chunk_new(b, dc, chunk_max);
    Chunk *c = dc->open;
    if (c->n == c->cap) {
        c->cap *= 2;
        c->slots = xrealloc(c->slots, sizeof(Slot) * (size_t)c->cap);
    }
    Buf *body = &c->body;
    if (c->n > 0)
        buf_putc(body, ',');
    Slot *sl = &c->slots[c->n++];
    sl->job = ev->job;
    sl->seq = ev->seq;
    sl->job_id = ev->job_id;
    sl->text = ev->dead_text ? ev->dead_text : ev->text;
    sl->message_id = ev->message_id;
    sl->off = body->len;
    buf_puts(body, "{\"message\":");
    buf_append(body, ev->text, ev->text_len);
    buf_printf(body, ",\"metadata\":{\"jobId\":%" PRId64, ev->job_id);
    buf_puts(body, dc->md_dest);
    buf_puts(body, ",\"workspaceId\":");
    jsonu_put_string(body, ev->workspace_id);
    buf_puts(body, ",\"userId\":");
    jsonu_put_string(body, ev->user_id);
    buf_puts(body, ",\"rudderId\":");
    jsonu_put_string(body, ev->rudder_id ? ev->rudder_id : "");
    buf_puts(body, ",\"receivedAt\":");
    jsonu_put_string(body, ev->received_at ? ev->received_at : "");
    buf_puts(body, ",\"createdAt\":");
    put_time(body, ev->created_at_ms);
    buf_puts(body, ",\"eventType\":");
    jsonu_put_string(body, ev->type);
    buf_puts(body, ",\"eventName\":");
    jsonu_put_string(body, ev->event_name ? ev->event_name : "");
    buf_puts(body, ",\"messageId\":");
    jsonu_put_string(body, ev->message_id ? ev->message_id : "");
    buf_puts(body, "},\"destination\":");
    buf_puts(body, dc->dest_json);
    buf_putc(body, '}');
    sl->end = body->len;
}

/* ---- completion ---- */

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    TfBatch *b = arg;
    b->done(b->done_arg, !b->abandoned);
}

/* Schedules done once: from the loop, so the callee may destroy b. */
static void finish(TfBatch *b)
{
    if (b->finished || b->done_ev == NULL)
        return; /* not started: nobody waits for it */
    b->finished = true;
    event_active(b->done_ev, 0, 0);
}

/* c has its answer (or was given up): the next chunk may go. */
static void chunk_end(Chunk *c)
{
    TfBatch *b = c->b;
    b->active--;
    b->unfinished--;
    buf_deinit(&c->body); /* answered: the request body is not needed again */
    if (b->abandoned) {
        if (b->requests == 0)
            finish(b);
        return;
    }
    if (b->unfinished == 0)
        finish(b);
    else
        pump(b);
}

/* ---- answers ---- */

static void dead(TfBatch *b, const Chunk *c, const Slot *sl, int status, DeadReason reason,
                 const char *error, size_t error_len)
{
    outputs_add_dead(b->outs, sl->job, sl->seq, c->dc->d->id, status, reason, error, error_len,
                     sl->text);
}

/* Every event of the chunk fails with the same status (whole-request 4xx). */
static void fail_all(TfBatch *b, const Chunk *c, int status, DeadReason reason, const char *error,
                     size_t error_len)
{
    for (int i = 0; i < c->n; i++)
        dead(b, c, &c->slots[i], status, reason, error, error_len);
}

static bool storable(const char *s, size_t n)
{
    return utf8_valid(s, n) && memchr(s, '\0', n) == NULL;
}

/* The slot of job_id in c (slots ascend by job id), or -1. Several slots
 * of one job (a user transformation's fan-out): the first one not yet
 * answered, else the first. */
static int find_slot(const Chunk *c, int64_t job_id, const bool *answered)
{
    int lo = 0, hi = c->n;
    while (lo < hi) { /* lower bound */
        int mid = (lo + hi) / 2;
        if (c->slots[mid].job_id < job_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= c->n || c->slots[lo].job_id != job_id)
        return -1;
    for (int k = lo; k < c->n && c->slots[k].job_id == job_id; k++)
        if (!answered[k])
            return k;
    return lo;
}

/* The slot whose message id is the string span id, or -1. */
static int find_message(const Chunk *c, JSpan id, Buf *scratch)
{
    buf_reset(scratch);
    if (!jscan_string(id, scratch) || scratch->len == 0)
        return -1;
    for (int k = c->n - 1; k >= 0; k--)
        if (c->slots[k].message_id != NULL && strcmp(c->slots[k].message_id, scratch->data) == 0)
            return k;
    return -1;
}

/* The input a user transformation's output belongs to (see transform.h). */
static int user_slot(const Chunk *c, JSpan md, bool has_md, Buf *scratch)
{
    JSpan v;
    int64_t job_id = -1;
    if (has_md && jscan_get(md, "jobId", &v) && jscan_int(v, &job_id) && job_id > 0) {
        int lo = 0, hi = c->n - 1;
        while (lo <= hi) { /* one slot per job in a user chunk */
            int mid = (lo + hi) / 2;
            if (c->slots[mid].job_id == job_id)
                return mid;
            if (c->slots[mid].job_id < job_id)
                lo = mid + 1;
            else
                hi = mid - 1;
        }
    }
    if (has_md && jscan_get(md, "messageId", &v) && jscan_type(v) == 's') {
        int k = find_message(c, v, scratch);
        if (k >= 0)
            return k;
    }
    if (has_md && jscan_get(md, "messageIds", &v)) {
        JIter it;
        JSpan id;
        int best = -1;
        if (jscan_array(v, &it))
            while (jscan_next_element(&it, &id)) {
                int k = find_message(c, id, scratch);
                if (k > best)
                    best = k;
            }
        if (best >= 0)
            return best;
    }
    return c->n - 1;
}

/* A /customTransform answer: outputs go on to the next stage. */
static void parse_user_answer(TfBatch *b, const Chunk *c, const char *body, size_t len)
{
    static const char not_array[] = "transformer answer to /customTransform is not a JSON array";
    static const char not_utf8[] = "user transformation output is not valid UTF-8";
    static const char not_object[] = "user transformation output is not a JSON object";
    static const char failed[] = "user transformation failed";
    const char *dest_id = c->dc->d->id;
    JSpan doc = jscan_doc(body, len);
    JIter it;
    if (!jscan_array(doc, &it)) {
        fail_all(b, c, 500, DEAD_USER_TRANSFORMATION, not_array, sizeof not_array - 1);
        return;
    }
    bool clean = storable(body, len);
    bool *answered = xcalloc((size_t)c->n, sizeof(bool));
    Buf *err = &b->err;
    Buf scratch;
    buf_init(&scratch);
    JSpan item;
    while (jscan_next_element(&it, &item)) {
        JSpan md, sc, out, e;
        int64_t status = 200;
        bool has_md = jscan_get(item, "metadata", &md) && jscan_type(md) == 'o';
        int k = user_slot(c, md, has_md, &scratch);
        const Slot *sl = &c->slots[k];
        answered[k] = true;
        if (jscan_get(item, "statusCode", &sc))
            jscan_int(sc, &status);
        if (status == 200) {
            if (!jscan_get(item, "output", &out) || jscan_type(out) != 'o')
                dead(b, c, sl, 400, DEAD_USER_TRANSFORMATION, not_object, sizeof not_object - 1);
            else if (!clean && !storable(out.p, out.n))
                dead(b, c, sl, 500, DEAD_USER_TRANSFORMATION, not_utf8, sizeof not_utf8 - 1);
            else
                b->on_output(b->output_arg, sl->job, sl->seq, c->dc->d, out.p, out.n);
        } else if (status == 298) {
            outputs_add_user_filtered(b->outs, sl->job, sl->seq, dest_id);
        } else {
            buf_reset(err);
            if (!jscan_get(item, "error", &e) || !jscan_string(e, err) || err->len == 0) {
                buf_reset(err);
                buf_puts(err, failed);
            }
            dead(b, c, sl, (int)status, DEAD_USER_TRANSFORMATION, err->data, err->len);
        }
    }
    if (it.failed)
        log_warn("transformer_answer_malformed", "destination_id=%s endpoint=customTransform",
                 dest_id);
    /* no output and no status: the code returned nothing for it (the
     * official transformer omits such events when it is not asked for 298) */
    for (int k = 0; k < c->n; k++)
        if (!answered[k])
            outputs_add_user_filtered(b->outs, c->slots[k].job, c->slots[k].seq, dest_id);
    buf_deinit(&scratch);
    free(answered);
}

/* The answer is picked apart with jscan: each output is kept as the exact
 * JSON text the transformer produced, without building a tree. */
static void parse_answer(TfBatch *b, const Chunk *c, const char *body, size_t len)
{
    static const char not_array[] = "transformer answer is not a JSON array";
    static const char missing[] = "event missing from the transformer's answer";
    static const char not_utf8[] = "transformer output is not valid UTF-8";
    static const char failed[] = "transformation failed";
    const char *dest_id = c->dc->d->id;
    JSpan doc = jscan_doc(body, len);
    JIter it;
    if (!jscan_array(doc, &it)) {
        fail_all(b, c, 500, DEAD_TRANSFORMER, not_array, sizeof not_array - 1);
        return;
    }
    /* one pass over the body; outputs are checked one by one only if it fails */
    bool clean = storable(body, len);
    bool *answered = xcalloc((size_t)c->n, sizeof(bool));
    Buf *err = &b->err;
    JSpan item;
    while (jscan_next_element(&it, &item)) {
        JSpan md, jid, sc, out, e;
        int64_t job_id = -1, status = 200;
        if (jscan_get(item, "metadata", &md)) {
            JIter ai;
            /* router-style answers carry a list of metadata */
            if (jscan_array(md, &ai) && !jscan_next_element(&ai, &md))
                md.n = 0;
            if (jscan_get(md, "jobId", &jid))
                jscan_int(jid, &job_id);
        }
        int k = job_id >= 0 ? find_slot(c, job_id, answered) : -1;
        if (k < 0) {
            log_warn("transformer_unknown_job", "destination_id=%s job_id=%" PRId64, dest_id,
                     job_id);
            continue;
        }
        const Slot *sl = &c->slots[k];
        answered[k] = true;
        if (jscan_get(item, "statusCode", &sc))
            jscan_int(sc, &status);
        bool has_out = jscan_get(item, "output", &out) && jscan_type(out) == 'o';
        if (status == 200 && has_out) {
            if (clean || storable(out.p, out.n))
                outputs_add_job(b->outs, sl->job, sl->seq, dest_id, false, out.p, out.n);
            else
                dead(b, c, sl, 500, DEAD_TRANSFORMER, not_utf8, sizeof not_utf8 - 1);
        } else if (status == 298) {
            outputs_add_filtered(b->outs, sl->job, sl->seq, dest_id);
        } else {
            if (status == 200)
                status = 500; /* 200 without an output object */
            buf_reset(err);
            if (!jscan_get(item, "error", &e) || !jscan_string(e, err) || err->len == 0) {
                buf_reset(err);
                buf_puts(err, failed);
            }
            dead(b, c, sl, (int)status, DEAD_TRANSFORMER, err->data, err->len);
        }
    }
    if (it.failed)
        log_warn("transformer_answer_malformed", "destination_id=%s", dest_id);
    for (int k = 0; k < c->n; k++)
        if (!answered[k])
            dead(b, c, &c->slots[k], 500, DEAD_TRANSFORMER, missing, sizeof missing - 1);
    free(answered);
}

/* A chunk of slots [from, to) of c, its body cut out of c's. */
static void split_off(TfBatch *b, const Chunk *c, int from, int to)
{
    Chunk *h = chunk_new(b, c->dc, to - from);
    size_t base = c->slots[from].off;
    buf_append(&h->body, c->body.data + base, c->slots[to - 1].end - base);
    buf_putc(&h->body, ']');
    for (int i = from; i < to; i++) {
        Slot *sl = &h->slots[h->n++];
        *sl = c->slots[i];
        sl->off = sl->off - base + 1;
        sl->end = sl->end - base + 1;
    }
}

/* Where to cut c in two: the job boundary nearest the middle (outputs of
 * one job stay together, in order), else the middle. */
static int split_point(const Chunk *c)
{
    int mid = c->n / 2;
    for (int d = 0; d < c->n; d++) {
        int k = mid + d;
        if (k > 0 && k < c->n && c->slots[k].job != c->slots[k - 1].job)
            return k;
        k = mid - d;
        if (k > 0 && k < c->n && c->slots[k].job != c->slots[k - 1].job)
            return k;
    }
    return mid;
}

/* The answer went past the response limit: halves are sent instead. */
static void answer_too_large(TfBatch *b, Chunk *c)
{
    const char *dest_id = c->dc->d->id;
    long limit = b->cfg->max_transformer_response_bytes;
    if (c->n == 1) {
        buf_reset(&b->err);
        buf_printf(&b->err,
                   "transformer answer for this event is larger than"
                   " processor.max_transformer_response_bytes (%ld bytes)",
                   limit);
        log_warn("transformer_answer_too_large",
                 "destination_id=%s job_id=%" PRId64 " limit_bytes=%ld", dest_id,
                 c->slots[0].job_id, limit);
        dead(b, c, &c->slots[0], 500, DEAD_ANSWER_TOO_LARGE, b->err.data, b->err.len);
        return;
    }
    int half = split_point(c);
    log_warn("transformer_answer_split", "destination_id=%s events=%d halves=%d+%d limit_bytes=%ld",
             dest_id, c->n, half, c->n - half, limit);
    metrics_inc(b->m->splits, 1);
    split_off(b, c, 0, half);
    split_off(b, c, half, c->n);
}

/* ---- requests ---- */

static void send_chunk(Chunk *c);

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    send_chunk(arg);
}

static void on_transformed(void *arg, const HttpcResponse *r)
{
    Chunk *c = arg;
    TfBatch *b = c->b;
    const char *dest_id = c->dc->d->id;
    b->requests--;
    metrics_observe(b->m->seconds, r->seconds);
    if (b->abandoned) {
        chunk_end(c);
        return;
    }
    /* Only a 200 answer is split: a truncated error page is handled by its
     * status like any other (retried or a rejection). */
    if (r->truncated && r->status == 200) {
        answer_too_large(b, c);
        chunk_end(c);
        return;
    }
    if (r->status == 413 && c->n > 1) {
        /* the request was too large for the transformer: halves, never
         * dead letters for good events (one event alone is a rejection) */
        log_warn("transformer_request_split", "destination_id=%s events=%d bytes=%zu", dest_id,
                 c->n, c->body.len);
        metrics_inc(b->m->splits, 1);
        int half = split_point(c);
        split_off(b, c, 0, half);
        split_off(b, c, half, c->n);
        chunk_end(c);
        return;
    }
    /* 809: the official transformer could not fetch the code (retry) */
    if (r->status == 0 || r->status >= 500 || r->status == 408 || r->status == 429 ||
        (b->user && r->status == 809)) {
        c->attempt++;
        int max = b->cfg->retry_max_backoff_ms;
        int ms = 100;
        for (int i = 1; i < c->attempt && ms < max; i++)
            ms *= 2;
        if (ms > max)
            ms = max;
        char q[600];
        log_warn("transformer_retry",
                 "destination_id=%s attempt=%d status=%ld backoff_ms=%d error=%s", dest_id,
                 c->attempt, r->status, ms, log_quote(q, sizeof q, r->error ? r->error : r->body));
        metrics_inc(b->m->retries, 1);
        if (c->retry_ev == NULL)
            c->retry_ev = evtimer_new(b->base, on_retry, c);
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(c->retry_ev, &tv);
        return;
    }
    if (r->status == 200) {
        if (b->user)
            parse_user_answer(b, c, r->body, r->body_len);
        else
            parse_answer(b, c, r->body, r->body_len);
    } else {
        Buf *e = &b->err;
        buf_reset(e);
        buf_printf(e, "transformer answered %ld: ", r->status);
        utf8_put_escaped(e, r->body, r->body_len, REJECTION_BODY_BYTES);
        log_warn("transformer_rejected", "destination_id=%s status=%ld events=%d", dest_id,
                 r->status, c->n);
        fail_all(b, c, (int)r->status, b->fail_reason, e->data, e->len);
    }
    chunk_end(c);
}

static void send_chunk(Chunk *c)
{
    TfBatch *b = c->b;
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    /* as rudder-server asks: a 298 for every event the code dropped */
    static const char *const user_headers[] = {"Content-Type: application/json",
                                               "X-Feature-Filter-Code: ?1", NULL};
    HttpcRequest req = {"POST",
                        c->dc->url,
                        b->user ? user_headers : headers,
                        c->body.data,
                        c->body.len,
                        b->user ? b->cfg->user_transform_timeout_ms
                                : b->cfg->transformer_timeout_ms,
                        .max_response_bytes = (size_t)b->cfg->max_transformer_response_bytes,
                        .keep_prefix = false};
    b->requests++;
    if (httpc_start(b->http, &req, on_transformed, c) < 0) {
        HttpcResponse r = {
            .status = 0, .curl_code = -1, .error = "could not start request", .body = ""};
        on_transformed(c, &r);
    }
}

static void pump(TfBatch *b)
{
    while (!b->abandoned && b->next < b->nchunks && b->active < b->cfg->max_inflight) {
        Chunk *c = b->chunks[b->next++];
        b->active++;
        send_chunk(c);
    }
}

void tf_batch_start(TfBatch *b, void (*done)(void *, bool), void *arg)
{
    b->done = done;
    b->done_arg = arg;
    b->done_ev = event_new(b->base, -1, 0, on_done, b);
    for (int i = 0; i < b->nchunks; i++)
        buf_putc(&b->chunks[i]->body, ']');
    if (b->nchunks == 0)
        finish(b);
    else
        pump(b);
}

void tf_batch_abandon(TfBatch *b)
{
    if (b->abandoned || b->finished)
        return;
    b->abandoned = true;
    for (int i = 0; i < b->nchunks; i++) {
        Chunk *c = b->chunks[i];
        if (c->retry_ev != NULL && evtimer_pending(c->retry_ev, NULL)) {
            evtimer_del(c->retry_ev);
            b->active--;
        }
    }
    if (b->requests > 0)
        httpc_cancel_all(b->http); /* each reports back, from the loop, as cancelled */
    else
        finish(b);
}
