#include "router/batch.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/jscan.h"
#include "common/jsonu.h"
#include "common/xalloc.h"

/* Lower-case, as RudderStack sends destType. */
static void put_lower_string(Buf *out, const char *s)
{
    char *t = xstrdup(s);
    for (char *p = t; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    jsonu_put_string(out, t);
    free(t);
}

/* The job's metadata, as much of RudderStack's JobMetadataT as the router
 * knows: the transformer lists it back per merged request. */
static void put_metadata(Buf *out, const OrderJob *j, const char *transform_at)
{
    buf_printf(out, "{\"jobId\":%" PRId64 ",\"userId\":", j->job_id);
    jsonu_put_string(out, j->user_id);
    buf_puts(out, ",\"sourceId\":");
    jsonu_put_string(out, j->source_id);
    buf_puts(out, ",\"destinationId\":");
    jsonu_put_string(out, j->dest_id);
    buf_puts(out, ",\"workspaceId\":");
    jsonu_put_string(out, j->workspace_id);
    buf_printf(out, ",\"attemptNum\":%d,\"transformAt\":\"%s\",\"dontBatch\":false}",
               j->attempts, transform_at);
}

void batch_format_request(Buf *out, const char *dest_type, const char *dest_json,
                          OrderJob *const *jobs, int n, bool router_transform)
{
    buf_puts(out, "{\"destType\":");
    put_lower_string(out, dest_type);
    buf_puts(out, ",\"input\":[");
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf_putc(out, ',');
        buf_puts(out, "{\"message\":");
        buf_puts(out, jobs[i]->payload);
        buf_puts(out, ",\"metadata\":");
        put_metadata(out, jobs[i], router_transform ? "router" : "processor");
        buf_puts(out, ",\"destination\":");
        buf_puts(out, dest_json);
        buf_putc(out, '}');
    }
    buf_puts(out, "]}");
}

static char *span_dup(JSpan v)
{
    return xstrndup(v.p, v.n);
}

static int parse_item(JSpan item, const char *what, BatchOut *o, Err *err)
{
    JSpan v;
    JIter it;
    memset(o, 0, sizeof(*o));
    o->status = 200;
    if (jscan_type(item) != 'o')
        return err_set(err, ERR_INVALID, "a %s answer item is not an object", what);
    int64_t code;
    if (jscan_get(item, "statusCode", &v) && jscan_int(v, &code) && code != 0)
        o->status = (int)code;
    if (jscan_get(item, "error", &v) && jscan_type(v) != 'z') {
        Buf e;
        buf_init(&e);
        if (jscan_type(v) != 's' || !jscan_string(v, &e))
            buf_append(&e, v.p, v.n);
        o->error = buf_take(&e, NULL);
    }
    if (!jscan_get(item, "metadata", &v) || !jscan_array(v, &it))
        return err_set(err, ERR_INVALID, "a %s answer item has no metadata array",
                       what);
    JSpan m;
    while (jscan_next_element(&it, &m)) {
        JSpan id;
        int64_t job_id;
        if (!jscan_get(m, "jobId", &id) || !jscan_int(id, &job_id))
            return err_set(err, ERR_INVALID, "a %s answer item lists a job without jobId",
                           what);
        o->job_ids = xrealloc(o->job_ids, sizeof(int64_t) * (size_t)(o->njobs + 1));
        o->job_ids[o->njobs++] = job_id;
    }
    if (it.failed)
        return err_set(err, ERR_INVALID, "a %s answer item has malformed metadata", what);
    if (o->status == 200 && jscan_get(item, "batchedRequest", &v)) {
        if (jscan_type(v) == 'o') {
            o->requests = xmalloc(sizeof(char *));
            o->requests[o->nrequests++] = span_dup(v);
        } else if (jscan_array(v, &it)) {
            JSpan r;
            while (jscan_next_element(&it, &r))
                if (jscan_type(r) == 'o') {
                    o->requests =
                        xrealloc(o->requests, sizeof(char *) * (size_t)(o->nrequests + 1));
                    o->requests[o->nrequests++] = span_dup(r);
                }
        }
    }
    if (o->status == 200 && o->nrequests == 0) {
        o->status = 500;
        if (o->error == NULL)
            o->error = xasprintf("the transformer's %s answer has no batchedRequest", what);
    }
    return 0;
}

int batch_parse_answer(const char *text, size_t len, bool router_transform, BatchOut **outs,
                       int *nouts, Err *err)
{
    const char *what = router_transform ? "/routerTransform" : "/batch";
    JSpan root = jscan_doc(text, len);
    JIter it;
    /* /routerTransform wraps the items: {"output": [...]} */
    if (router_transform && (jscan_type(root) != 'o' || !jscan_get(root, "output", &root)))
        return err_set(err, ERR_INVALID,
                       "the transformer's /routerTransform answer has no output array");
    if (!jscan_array(root, &it))
        return err_set(err, ERR_INVALID, "the transformer's %s answer is not a JSON array%s", what,
                       router_transform ? " in output" : "");
    BatchOut *o = NULL;
    int n = 0;
    JSpan item;
    int rc = 0;
    while (jscan_next_element(&it, &item)) {
        o = xrealloc(o, sizeof(*o) * (size_t)(n + 1));
        rc = parse_item(item, what, &o[n], err);
        n++;
        if (rc < 0)
            break;
    }
    if (rc == 0 && it.failed)
        rc = err_set(err, ERR_INVALID, "the transformer's %s answer is malformed", what);
    if (rc < 0) {
        batch_outs_free(o, n);
        return rc;
    }
    *outs = o;
    *nouts = n;
    return 0;
}

void batch_outs_free(BatchOut *outs, int n)
{
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < outs[i].nrequests; r++)
            free(outs[i].requests[r]);
        free(outs[i].requests);
        free(outs[i].error);
        free(outs[i].job_ids);
    }
    free(outs);
}

void batch_format_proxy(Buf *out, const char *payload, OrderJob *const *jobs, int n,
                        const char *dest_config)
{
    JSpan root = jscan_doc(payload, strlen(payload));
    /* the payload's members, without its closing brace */
    size_t keep = root.n > 0 ? root.n - 1 : 0;
    while (keep > 1 && (root.p[keep - 1] == ' ' || root.p[keep - 1] == '\n'))
        keep--;
    bool empty = keep <= 1;
    buf_append(out, root.p, keep);
    buf_puts(out, empty ? "\"metadata\":[" : ",\"metadata\":[");
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf_putc(out, ',');
        put_metadata(out, jobs[i], "processor");
    }
    buf_puts(out, "],\"destinationConfig\":");
    buf_puts(out, dest_config && *dest_config ? dest_config : "{}");
    buf_putc(out, '}');
}

long batch_proxy_status(const char *body, size_t len, int64_t job_id, long http_status, Buf *why)
{
    JSpan root = jscan_doc(body ? body : "", body ? len : 0);
    JSpan output, v, item;
    JIter it;
    if (!jscan_get(root, "output", &output) || jscan_type(output) != 'o')
        return http_status;
    long status = http_status;
    int64_t x;
    if (jscan_get(output, "status", &v) && jscan_int(v, &x) && x > 0)
        status = (long)x;
    if (jscan_get(output, "message", &v) && jscan_type(v) == 's') {
        buf_reset(why);
        jscan_string(v, why);
    }
    if (jscan_get(output, "response", &v) && jscan_array(v, &it))
        while (jscan_next_element(&it, &item)) {
            JSpan m, id, code, err;
            int64_t jid, c;
            if (!jscan_get(item, "metadata", &m) || !jscan_get(m, "jobId", &id) ||
                !jscan_int(id, &jid) || jid != job_id)
                continue;
            if (jscan_get(item, "statusCode", &code) && jscan_int(code, &c) && c > 0)
                status = (long)c;
            if (jscan_get(item, "error", &err) && jscan_type(err) == 's') {
                buf_reset(why);
                jscan_string(err, why);
            }
            break;
        }
    return status;
}
