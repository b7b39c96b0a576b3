/* Routing of a claimed batch (see route.h).
 *
 * A destination whose definition says transformAt router (transformAtV1,
 * as rudder-server reads it) is not transformed here: its event (user-
 * transformed first, if it has a transformation) is written to rt as it
 * is, and the router transforms it through the transformer's
 * /routerTransform. (rudder-server also requires the transformer's
 * /features to list the type under routerTransform; pintle trusts the
 * definition.)
 *
 * Snapshot: a batch is routed with one workspace snapshot, held until the
 * batch is reset, because its chunks and outputs point into it; a reload
 * meanwhile applies from the next batch on.
 *
 * Nothing consumed disappears: every gw job either yields outputs (rt /
 * batch_rt jobs, filtered events) or dead letters. Dead letters decided
 * here: a source missing from the snapshot, a payload that is not a JSON
 * object, an event without a type, a
 * replayed job whose destination is gone or no longer takes the event. (The
 * transformer's rejections are added by processor/transform.c.) An event
 * for a destination with a user transformation goes to /customTransform
 * first (never on untransformed); each output comes back through
 * route_user_output, in the order of the answer, under the gw job and
 * destination order of its input, so per-user order holds however many
 * outputs an event has. A gw job
 * with destination_id set is a replayed dead letter (pintlectl replay): it
 * is routed to that one destination only. */
#include "processor/route.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/buf.h"
#include "common/jsonu.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "processor/events.h"

void route_batch_init(Batch *b)
{
    memset(b, 0, sizeof *b);
    outputs_init(&b->outs);
}

void route_batch_deinit(Batch *b)
{
    route_batch_reset(b);
    free(b->ut_texts);
    b->ut_texts = NULL;
    b->caput = 0;
    outputs_deinit(&b->outs);
}

void route_batch_reset(Batch *b)
{
    outputs_reset(&b->outs);
    for (int i = 0; i < b->njobs; i++) {
        Job *j = &b->jobs[i];
        free(j->workspace_id);
        free(j->source_id);
        free(j->user_id);
        free(j->dest_id);
        free(j->text);
        free(j->type);
        free(j->message_id);
        free(j->rudder_id);
        free(j->received_at);
        free(j->event_name);
    }
    free(b->jobs);
    for (int i = 0; i < b->nut; i++)
        free(b->ut_texts[i]);
    b->nut = 0;
    b->jobs = NULL;
    b->njobs = 0;
    ws_unref(b->snap);
    b->snap = NULL;
}

/* A dead letter for the whole job i (no destination, or its replay target). */
static void job_dead(Batch *b, int i, const char *dest_id, int status, DeadReason reason,
                     const char *fmt, const char *arg1, const char *arg2)
{
    Buf msg; /* whole ids: a fixed buffer could cut one mid-character */
    buf_init(&msg);
    buf_printf(&msg, fmt, arg1, arg2);
    outputs_add_dead(&b->outs, i, 0, dest_id, status, reason, msg.data, msg.len, b->jobs[i].text);
    buf_deinit(&msg);
}

/* Sends job i (its tree is ev) to every destination it goes to: the
 * transformer's chunks, batch_rt outputs, or dead letters. */
/* The transformer's view of job i, its text being text[0..len). */
static TfEvent job_event(const Batch *b, int i, const char *text, size_t len)
{
    const Job *j = &b->jobs[i];
    return (TfEvent){.job = i,
                     .job_id = j->job_id,
                     .text = text,
                     .text_len = len,
                     .dead_text = j->text,
                     .workspace_id = j->workspace_id,
                     .user_id = j->user_id,
                     .type = j->type,
                     .message_id = j->message_id,
                     .rudder_id = j->rudder_id,
                     .received_at = j->received_at,
                     .event_name = j->event_name,
                     .created_at_ms = j->created_at_ms};
}

static void route_job(Batch *b, TfBatch *ut, TfBatch *tf, int i, json_object *ev)
{
    Job *j = &b->jobs[i];
    const WsSource *s = ws_source_by_id(b->snap, j->source_id);
    if (s == NULL) {
        job_dead(b, i, j->dest_id ? j->dest_id : "", 404, DEAD_UNKNOWN_SOURCE,
                 "source \"%s\" is not in the workspace config", j->source_id, NULL);
        return;
    }
    if (j->type == NULL) {
        job_dead(b, i, j->dest_id ? j->dest_id : "", 400, DEAD_NO_TYPE, "event has no type", NULL,
                 NULL);
        return;
    }
    TfEvent te = job_event(b, i, j->text, j->text_len);
    bool found = false;
    for (int k = 0; k < s->ndests; k++) {
        const WsDestination *d = &s->dests[k];
        if (j->dest_id != NULL && strcmp(d->id, j->dest_id) != 0)
            continue;
        found = true;
        if (!events_dest_wanted(d, ev, j->type)) {
            if (j->dest_id != NULL) /* a replay must not vanish: say why it stops here */
                job_dead(b, i, d->id, 409, DEAD_UNKNOWN_DESTINATION,
                         "destination \"%s\" no longer takes this event (disabled, type not"
                         " supported or excluded by integrations)",
                         d->id, NULL);
            continue;
        }
        int seq = k + 1;
        te.seq = seq;
        if (d->transformation_id != NULL) {
            /* the user transformation first; its outputs come back through
             * route_user_output */
            tf_batch_add(ut, s, d, &te);
            continue;
        }
        if (d->batch || d->router_transform) {
            /* object storage and warehouses take the event as it is; a
             * transformAt router destination gets it transformed by the
             * router's /routerTransform */
            outputs_add_job(&b->outs, i, seq, d->id, d->batch, j->text, j->text_len);
            continue;
        }
        tf_batch_add(tf, s, d, &te);
    }
    if (j->dest_id != NULL && !found)
        job_dead(b, i, j->dest_id, 404, DEAD_UNKNOWN_DESTINATION,
                 "destination \"%s\" of source \"%s\" is not in the workspace config", j->dest_id,
                 j->source_id);
}

void route_user_output(Batch *b, TfBatch *tf, int job, int seq, const WsDestination *d,
                       const char *out, size_t len)
{
    /* as rudder-server filters user-transformed events: one whose type the
     * destination does not take, or whose integrations now exclude it, is
     * filtered (the type may have changed; an output without one keeps the
     * input's) */
    json_tokener *tok = json_tokener_new(); /* out is not NUL-terminated */
    json_object *tree = json_tokener_parse_ex(tok, out, (int)len);
    json_tokener_free(tok);
    const char *type = tree ? jsonu_str_ci(tree, "type", b->jobs[job].type) : NULL;
    bool wanted = type != NULL && events_dest_wanted(d, tree, type);
    json_object_put(tree);
    if (!wanted) {
        outputs_add_user_filtered(&b->outs, job, seq, d->id);
        return;
    }
    if (d->batch || d->router_transform) {
        /* object storage and warehouses take the transformed event as it
         * is; a transformAt router destination's goes to rt as it is */
        outputs_add_job(&b->outs, job, seq, d->id, d->batch, out, len);
        return;
    }
    const WsSource *s = ws_source_by_id(b->snap, b->jobs[job].source_id);
    ASSERT(s != NULL); /* the job was routed to d with this snapshot */
    if (b->nut == b->caput) {
        b->caput = b->caput ? b->caput * 2 : 64;
        b->ut_texts = xrealloc(b->ut_texts, sizeof(char *) * (size_t)b->caput);
    }
    char *text = xstrndup(out, len);
    b->ut_texts[b->nut++] = text;
    TfEvent te = job_event(b, job, text, len);
    te.seq = seq;
    tf_batch_add(tf, s, d, &te);
}

void route_batch_load(Batch *b, const PGresult *res, const Workspace *snap, TfBatch *ut,
                      TfBatch *tf, int64_t now_ms)
{
    int n = PQntuples(res);
    b->jobs = xcalloc((size_t)n, sizeof(Job));
    b->njobs = n;
    b->snap = snap;
    for (int i = 0; i < n; i++) {
        Job *j = &b->jobs[i];
        j->job_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        j->partition = atoi(PQgetvalue(res, i, 1));
        j->workspace_id = xstrdup(PQgetvalue(res, i, 2));
        j->source_id = xstrdup(PQgetvalue(res, i, 3));
        const char *dest = PQgetvalue(res, i, 4);
        j->dest_id = dest[0] != '\0' ? xstrdup(dest) : NULL;
        j->user_id = xstrdup(PQgetvalue(res, i, 5));
        j->created_at_ms = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        const char *payload = PQgetvalue(res, i, 7);
        /* parse, normalise, serialise and route one event at a time, so only
         * one JSON tree is alive: memory is the serialised batch, not trees */
        json_object *ev = json_tokener_parse(payload);
        if (ev != NULL && json_object_is_type(ev, json_type_object)) {
            events_normalize_times(ev, now_ms);
            const char *t = jsonu_str_ci(ev, "type", NULL);
            const char *m = jsonu_str_ci(ev, "messageId", NULL);
            j->type = t ? xstrdup(t) : NULL;
            j->message_id = m ? xstrdup(m) : NULL;
            const char *rid = jsonu_str_ci(ev, "rudderId", NULL);
            const char *rat = jsonu_str_ci(ev, "receivedAt", NULL);
            const char *name = jsonu_str_ci(ev, "event", NULL);
            j->rudder_id = rid ? xstrdup(rid) : NULL;
            j->received_at = rat ? xstrdup(rat) : NULL;
            j->event_name = name ? xstrdup(name) : NULL;
            const char *text = jsonu_to_string(ev, &j->text_len);
            j->text = xstrndup(text, j->text_len);
            route_job(b, ut, tf, i, ev);
        } else {
            j->text_len = (size_t)PQgetlength(res, i, 7);
            j->text = xstrndup(payload, j->text_len);
            log_debug("job_unparsable", "job_id=%" PRId64, j->job_id);
            job_dead(b, i, j->dest_id ? j->dest_id : "", 400, DEAD_UNPARSABLE,
                     "payload is not a JSON object", NULL, NULL);
        }
        json_object_put(ev);
    }
}
