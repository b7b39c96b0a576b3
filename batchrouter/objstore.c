/* Object storage uploads (see objstore.h). */
#include "batchrouter/objstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

#include "common/jsonu.h"
#include "common/xalloc.h"

bool objstore_is_type(const char *def_name)
{
    return strcasecmp(def_name, "S3") == 0 || strcasecmp(def_name, "MINIO") == 0 ||
           strcasecmp(def_name, "DIGITAL_OCEAN_SPACES") == 0;
}

static char *trim_slashes(const char *s)
{
    while (*s == '/')
        s++;
    char *r = xstrdup(s);
    size_t n = strlen(r);
    while (n > 0 && r[n - 1] == '/')
        r[--n] = '\0';
    return r;
}

/* "host:port" or a URL: a base URL without a trailing '/'. */
static char *endpoint_url(const char *ep, bool ssl)
{
    if (strncmp(ep, "http://", 7) == 0 || strncmp(ep, "https://", 8) == 0) {
        char *r = xstrdup(ep);
        size_t n = strlen(r);
        while (n > 0 && r[n - 1] == '/')
            r[--n] = '\0';
        return r;
    }
    return xasprintf("%s://%s", ssl ? "https" : "http", ep);
}

int objstore_target_parse(ObjTarget *t, const char *def, json_object *cfg, const char *s3_override,
                          Err *err)
{
    const char *bucket = jsonu_str_ci(cfg, "bucketName", "");
    const char *ep = jsonu_str_ci(cfg, "endPoint", "");
    const char *key_id = jsonu_str_ci(cfg, "accessKeyID", "");
    const char *prefix = jsonu_str_ci(cfg, "prefix", "");
    const char *region = jsonu_str_ci(cfg, "region", "");
    bool minio = strcasecmp(def, "MINIO") == 0;
    bool spaces = strcasecmp(def, "DIGITAL_OCEAN_SPACES") == 0;
    const char *secret = jsonu_str_ci(cfg, minio ? "secretAccessKey" : "accessKey", "");
    if (bucket[0] == '\0')
        return err_set(err, ERR_INVALID, "destination config has no bucketName");
    if ((minio || spaces) && ep[0] == '\0')
        return err_set(err, ERR_INVALID, "%s destination config has no endPoint", def);
    const char *secret_key = minio ? "secretAccessKey" : "accessKey";
    if (key_id[0] == '\0' || secret[0] == '\0') {
        /* RudderStack can assume an IAM role (or use the instance's
         * credentials); pintle signs only with static keys */
        if (jsonu_bool_ci(cfg, "roleBasedAuth", false) || jsonu_str_ci(cfg, "iamRoleARN", "")[0])
            return err_set(err, ERR_INVALID,
                           "role-based credentials (roleBasedAuth, iamRoleARN) are not supported: "
                           "give accessKeyID and %s",
                           secret_key);
        return err_set(err, ERR_INVALID, "destination config has no %s",
                       key_id[0] == '\0' ? "accessKeyID" : secret_key);
    }
    ObjTarget r;
    memset(&r, 0, sizeof r);
    if (minio) {
        r.base_url = endpoint_url(ep, jsonu_bool_ci(cfg, "useSSL", false));
        if (region[0] == '\0')
            region = "us-east-1";
    } else if (spaces) {
        r.base_url = endpoint_url(ep, !jsonu_bool_ci(cfg, "disableSSL", false));
        r.virtual_host = !jsonu_bool_ci(cfg, "forcePathStyle", false) &&
                         strncmp(ep, "http", 4) != 0;
        char derived[64] = "us-east-1"; /* nyc3.digitaloceanspaces.com -> nyc3 */
        if (region[0] == '\0') {
            const char *dot = strchr(ep, '.');
            if (dot != NULL && (size_t)(dot - ep) < sizeof derived) {
                memcpy(derived, ep, (size_t)(dot - ep));
                derived[dot - ep] = '\0';
            }
            region = derived;
        }
        r.region = xstrdup(region);
    } else {
        if (region[0] == '\0')
            region = "us-east-1";
        if (ep[0] != '\0') {
            r.base_url = endpoint_url(ep, !jsonu_bool_ci(cfg, "disableSSL", false));
        } else if (s3_override != NULL && s3_override[0] != '\0') {
            r.base_url = endpoint_url(s3_override, false);
        } else {
            r.base_url = xasprintf("https://s3.%s.amazonaws.com", region);
            r.virtual_host = true;
        }
        r.sse = jsonu_bool_ci(cfg, "enableSSE", false);
    }
    if (r.region == NULL)
        r.region = xstrdup(region);
    r.bucket = xstrdup(bucket);
    r.prefix = trim_slashes(prefix);
    r.access_key_id = xstrdup(key_id);
    r.secret = xstrdup(secret);
    *t = r;
    return 0;
}

void objstore_target_deinit(ObjTarget *t)
{
    free(t->base_url);
    free(t->bucket);
    free(t->prefix);
    free(t->region);
    free(t->access_key_id);
    free(t->secret);
    memset(t, 0, sizeof *t);
}

void objstore_format_key(Buf *out, const char *prefix, const char *source_id, int64_t created_ms,
                         const char *batch_id)
{
    time_t secs = (time_t)(created_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (prefix != NULL && prefix[0] != '\0')
        buf_printf(out, "%s/", prefix);
    buf_printf(out, "rudder-logs/%s/%04d-%02d-%02d/%lld.%s.%s.json.gz", source_id,
               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, (long long)secs, source_id, batch_id);
}

void objstore_format_archive_key(Buf *out, const char *prefix, const char *source_id,
                                 int64_t first_ms, int64_t last_ms, const char *instance_id,
                                 const char *workspace_id, const char *batch_id)
{
    time_t secs = (time_t)(first_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (prefix != NULL && prefix[0] != '\0')
        buf_printf(out, "%s/", prefix);
    buf_printf(out, "%s/gw/%04d-%02d-%02d/%d/%s/%lld_%lld_%s_%s.json.gz", source_id,
               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, instance_id,
               (long long)secs, (long long)(last_ms / 1000), workspace_id, batch_id);
}

void objstore_gzip(Buf *out, const void *data, size_t len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* windowBits 15 + 16: a gzip wrapper whose header has mtime 0 and no
     * name, so the same data always gives the same bytes */
    int rc = deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK)
        abort();
    size_t bound = deflateBound(&z, (uLong)len);
    buf_reserve(out, bound);
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len);
    rc = deflate(&z, Z_FINISH);
    if (rc != Z_STREAM_END)
        abort(); /* deflateBound guarantees room */
    out->len += z.total_out;
    deflateEnd(&z);
}

void objstore_format_url(Buf *out, const ObjTarget *t, const char *key)
{
    if (t->virtual_host) {
        const char *host = strstr(t->base_url, "://");
        host = host ? host + 3 : t->base_url;
        buf_printf(out, "%.*s%s.%s/", (int)(host - t->base_url), t->base_url, t->bucket, host);
    } else {
        buf_printf(out, "%s/", t->base_url);
        httpc_url_encode(out, t->bucket, strlen(t->bucket));
        buf_putc(out, '/');
    }
    const char *s = key;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        httpc_url_encode(out, s, n);
        if (slash == NULL)
            break;
        buf_putc(out, '/');
        s = slash + 1;
    }
}

int objstore_put(Httpc *h, const ObjTarget *t, const char *key, const void *body, size_t len,
                 long timeout_ms, HttpcDoneCb done, void *arg)
{
    Buf url;
    buf_init(&url);
    objstore_format_url(&url, t, key);
    char hash[65];
    httpc_sha256_hex(body, len, hash);
    char hash_hdr[100];
    snprintf(hash_hdr, sizeof hash_hdr, "x-amz-content-sha256: %s", hash);
    const char *headers[4] = {hash_hdr, "Content-Type: application/gzip", NULL, NULL};
    if (t->sse)
        headers[2] = "x-amz-server-side-encryption: AES256";
    char provider[128];
    snprintf(provider, sizeof provider, "aws:amz:%s:s3", t->region);
    char *userpwd = xasprintf("%s:%s", t->access_key_id, t->secret);
    HttpcRequest req = {"PUT", url.data, headers, body, len, timeout_ms, .max_response_bytes = 65536,
                        .keep_prefix = true, .aws_sigv4 = provider, .userpwd = userpwd};
    int rc = httpc_start(h, &req, done, arg);
    free(userpwd);
    buf_deinit(&url);
    return rc;
}

void objstore_error_code(const char *body, char *out, size_t size)
{
    out[0] = '\0';
    const char *s = body ? strstr(body, "<Code>") : NULL;
    if (s == NULL)
        return;
    s += 6;
    const char *e = strstr(s, "</Code>");
    if (e == NULL)
        return;
    size_t n = (size_t)(e - s);
    if (n >= size)
        n = size - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}
