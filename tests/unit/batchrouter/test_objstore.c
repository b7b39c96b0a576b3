/* Tests batchrouter/objstore.c: object key naming, the URL (key segments
 * percent-encoded), the deterministic gzip body, RudderStack's MINIO config
 * keys, S3 error codes, and the signed PUT as it goes on the wire. libcurl
 * computes the SigV4 signature, so the PUT is captured by a one-shot HTTP
 * server on loopback and its Authorization header is checked against a
 * reference SigV4 signer in this file; that signer is itself checked
 * against AWS's documented GET-object example (SigV4 "Examples: Signature
 * Calculations in AWS Signature Version 4", AKIAIOSFODNN7EXAMPLE). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "batchrouter/objstore.h"
#include "common/httpc.h"

/* ---- a reference SigV4 signer (AWS's algorithm, for S3) ---- */

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void hmac(const void *key, size_t klen, const char *msg, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

/* canonical_headers: "name:value\n" lines, lowercase names in order. */
static void sigv4(const char *method, const char *uri, const char *query,
                  const char *canonical_headers, const char *signed_headers,
                  const char *payload_hash, const char *amz_date, const char *region,
                  const char *secret, char sig[65])
{
    char canon[4096], hash[65], sts[1024], day[9];
    snprintf(canon, sizeof canon, "%s\n%s\n%s\n%s\n%s\n%s", method, uri, query, canonical_headers,
             signed_headers, payload_hash);
    httpc_sha256_hex(canon, strlen(canon), hash);
    memcpy(day, amz_date, 8);
    day[8] = '\0';
    snprintf(sts, sizeof sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/s3/aws4_request\n%s", amz_date, day,
             region, hash);
    char k0[256];
    snprintf(k0, sizeof k0, "AWS4%s", secret);
    unsigned char k1[32], k2[32], k3[32], k4[32], s[32];
    hmac(k0, strlen(k0), day, k1);
    hmac(k1, 32, region, k2);
    hmac(k2, 32, "s3", k3);
    hmac(k3, 32, "aws4_request", k4);
    hmac(k4, 32, sts, s);
    hex(s, 32, sig);
}

static void test_reference_signer_aws_example(void **state)
{
    /* AWS's GET object example: GET /test.txt with Range: bytes=0-9 */
    char sig[65];
    sigv4("GET", "/test.txt", "",
          "host:examplebucket.s3.amazonaws.com\n"
          "range:bytes=0-9\n"
          "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
          "x-amz-date:20130524T000000Z\n",
          "host;range;x-amz-content-sha256;x-amz-date",
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "20130524T000000Z",
          "us-east-1", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sig);
    assert_string_equal(sig, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    /* the empty payload's hash, as the example uses it */
    char h[65];
    httpc_sha256_hex("", 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* ---- key, URL, gzip, config ---- */

static void test_key_format(void **state)
{
    Buf b;
    buf_init(&b);
    objstore_format_key(&b, "logs/pintle", "src-1", 1700000000123LL,
                        "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_string_equal(b.data, "logs/pintle/rudder-logs/src-1/2023-11-14/1700000000.src-1."
                                "0f8fad5b-d9cb-469f-a165-70867728950e.json.gz");
    b.len = 0;
    objstore_format_key(&b, "", "s", 86399999LL, "id"); /* the last ms of 1970-01-01 UTC */
    assert_string_equal(b.data, "rudder-logs/s/1970-01-01/86399.s.id.json.gz");
    buf_deinit(&b);
}

/* RudderStack's jobs backup layout: source, "gw", day and unpadded hour of
 * the first event, instance, then first_last_workspace_uuid */
static void test_archive_key_format(void **state)
{
    Buf b;
    buf_init(&b);
    /* 1700000000 is 2023-11-14 22:13:20 UTC */
    objstore_format_archive_key(&b, "backups", "src-1", 1700000000123LL, 1700003600999LL, "1",
                                "ws-1", "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_string_equal(b.data, "backups/src-1/gw/2023-11-14/22/1/1700000000_1700003600_ws-1_"
                                "0f8fad5b-d9cb-469f-a165-70867728950e.json.gz");
    b.len = 0;
    objstore_format_archive_key(&b, "", "s", 3600000LL, 3600000LL, "node-b", "w", "id");
    assert_string_equal(b.data, "s/gw/1970-01-01/1/node-b/3600_3600_w_id.json.gz");
    b.len = 0;
    objstore_format_archive_key(&b, NULL, "s", 0, 999, "1", "w", "id");
    assert_string_equal(b.data, "s/gw/1970-01-01/0/1/0_0_w_id.json.gz");
    buf_deinit(&b);
}

static void test_url_encoding(void **state)
{
    ObjTarget t = {.base_url = "http://127.0.0.1:9000", .bucket = "my-bucket"};
    Buf b;
    buf_init(&b);
    /* '/' separates segments; everything but unreserved characters is
     * percent-encoded once, which is also S3's canonical URI */
    objstore_format_url(&b, &t, "a b/rudder-logs/s+1/x=y~z_.json.gz");
    assert_string_equal(b.data,
                        "http://127.0.0.1:9000/my-bucket/a%20b/rudder-logs/s%2B1/x%3Dy~z_.json.gz");
    b.len = 0;
    ObjTarget v = {
        .base_url = "https://s3.eu-west-1.amazonaws.com", .virtual_host = true, .bucket = "bk1"};
    objstore_format_url(&b, &v, "k/e y");
    assert_string_equal(b.data, "https://bk1.s3.eu-west-1.amazonaws.com/k/e%20y");
    buf_deinit(&b);
}

static void test_gzip_deterministic(void **state)
{
    const char *lines = "{\"a\":1}\n{\"b\":2}\n";
    Buf g1, g2;
    buf_init(&g1);
    buf_init(&g2);
    objstore_gzip(&g1, lines, strlen(lines));
    objstore_gzip(&g2, lines, strlen(lines));
    assert_int_equal(g1.len, g2.len);
    assert_memory_equal(g1.data, g2.data, g1.len);
    assert_int_equal((unsigned char)g1.data[0], 0x1f);
    assert_int_equal((unsigned char)g1.data[1], 0x8b);
    assert_int_equal(g1.data[4] | g1.data[5] | g1.data[6] | g1.data[7], 0); /* mtime 0 */
    char out[64];
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)g1.data;
    z.avail_in = (uInt)g1.len;
    z.next_out = (Bytef *)out;
    z.avail_out = sizeof out;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.total_out, strlen(lines));
    assert_memory_equal(out, lines, strlen(lines));
    inflateEnd(&z);
    buf_deinit(&g1);
    buf_deinit(&g2);
}

static void test_minio_config(void **state)
{
    json_object *cfg = json_tokener_parse(
        "{\"endPoint\":\"127.0.0.1:9000\",\"bucketName\":\"b\",\"accessKeyID\":\"AK\","
        "\"secretAccessKey\":\"SK\",\"prefix\":\"/p/q/\",\"useSSL\":false}");
    ObjTarget t;
    Err err;
    assert_int_equal(objstore_target_parse(&t, "MINIO", cfg, "", &err), 0);
    assert_string_equal(t.base_url, "http://127.0.0.1:9000");
    assert_false(t.virtual_host);
    assert_string_equal(t.bucket, "b");
    assert_string_equal(t.prefix, "p/q");
    assert_string_equal(t.region, "us-east-1");
    assert_string_equal(t.access_key_id, "AK");
    assert_string_equal(t.secret, "SK");
    objstore_target_deinit(&t);
    json_object_put(cfg);
    cfg = json_tokener_parse("{\"endPoint\":\"h:1\",\"accessKeyID\":\"AK\"}");
    assert_true(objstore_target_parse(&t, "MINIO", cfg, "", &err) < 0);
    assert_int_equal(err.code, ERR_INVALID);
    json_object_put(cfg);
    /* S3 without an endpoint: AWS, virtual-hosted, its secret in accessKey */
    cfg = json_tokener_parse("{\"bucketName\":\"b\",\"accessKeyID\":\"AK\",\"accessKey\":\"SK\","
                             "\"region\":\"eu-west-1\",\"enableSSE\":true}");
    assert_int_equal(objstore_target_parse(&t, "S3", cfg, "", &err), 0);
    assert_string_equal(t.base_url, "https://s3.eu-west-1.amazonaws.com");
    assert_true(t.virtual_host);
    assert_true(t.sse);
    assert_string_equal(t.secret, "SK");
    objstore_target_deinit(&t);
    json_object_put(cfg);
    /* static keys only: a missing secret, or an IAM role, is a config error */
    cfg = json_tokener_parse("{\"bucketName\":\"b\",\"accessKeyID\":\"AK\"}");
    assert_true(objstore_target_parse(&t, "S3", cfg, "", &err) < 0);
    assert_non_null(strstr(err.msg, "no accessKey"));
    json_object_put(cfg);
    cfg = json_tokener_parse("{\"bucketName\":\"b\",\"roleBasedAuth\":true,"
                             "\"iamRoleARN\":\"arn:aws:iam::1:role/r\"}");
    assert_true(objstore_target_parse(&t, "S3", cfg, "", &err) < 0);
    assert_non_null(strstr(err.msg, "role-based credentials"));
    json_object_put(cfg);
    cfg = json_tokener_parse("{\"bucketName\":\"b\",\"endPoint\":\"h:1\",\"secretAccessKey\":\"SK\"}");
    assert_true(objstore_target_parse(&t, "MINIO", cfg, "", &err) < 0);
    assert_non_null(strstr(err.msg, "no accessKeyID"));
    json_object_put(cfg);
}

static void test_error_code(void **state)
{
    char code[64];
    objstore_error_code("<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>"
                        "<Message/></Error>",
                        code, sizeof code);
    assert_string_equal(code, "SignatureDoesNotMatch");
    objstore_error_code("not xml", code, sizeof code);
    assert_string_equal(code, "");
    objstore_error_code(NULL, code, sizeof code);
    assert_string_equal(code, "");
}

/* ---- the PUT on the wire ---- */

typedef struct Capture {
    int lfd;
    char req[65536];
    size_t len;
} Capture;

static void *serve_one(void *arg)
{
    Capture *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    size_t want = 0;
    for (;;) {
        ssize_t n = read(fd, c->req + c->len, sizeof c->req - 1 - c->len);
        if (n <= 0)
            break;
        c->len += (size_t)n;
        c->req[c->len] = '\0';
        char *end = strstr(c->req, "\r\n\r\n");
        if (end != NULL && want == 0) {
            char *cl = strcasestr(c->req, "\r\ncontent-length:");
            want = (size_t)(end + 4 - c->req) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
        }
        if (want != 0 && c->len >= want)
            break;
    }
    const char *ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    ssize_t w = write(fd, ok, strlen(ok));
    (void)w;
    close(fd);
    return NULL;
}

static void done_cb(void *arg, const HttpcResponse *r)
{
    long *status = arg;
    *status = r->status;
}

/* The value of header name (lowercase match) into out. */
static void header(const char *req, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    char pat[128];
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *s = strcasestr(req, pat);
    if (s == NULL)
        return;
    s += strlen(pat);
    while (*s == ' ')
        s++;
    const char *e = strstr(s, "\r\n");
    snprintf(out, size, "%.*s", (int)(e - s), s);
}

static void test_signed_put(void **state)
{
    Capture *cap = calloc(1, sizeof *cap);
    cap->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(cap->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(cap->lfd, 1), 0);
    socklen_t al = sizeof a;
    getsockname(cap->lfd, (struct sockaddr *)&a, &al);
    pthread_t th;
    pthread_create(&th, NULL, serve_one, cap);

    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", ntohs(a.sin_port));
    ObjTarget t = {.base_url = base,
                   .bucket = "bucket-1",
                   .prefix = "",
                   .region = "eu-central-1",
                   .access_key_id = "AKIDEXAMPLE",
                   .secret = "s3cr3t/KEY+x"};
    const char *key = "p q/rudder-logs/src-1/2023-11-14/1700000000.src-1.id.json.gz";
    const char body[] = "\x1f\x8b payload bytes";
    struct event_base *eb = event_base_new();
    Httpc *h = httpc_create(eb, 4);
    long status = -1;
    assert_int_equal(objstore_put(h, &t, key, body, sizeof body - 1, 5000, done_cb, &status), 0);
    while (status == -1)
        event_base_loop(eb, EVLOOP_ONCE);
    assert_int_equal(status, 200);
    pthread_join(th, NULL);
    close(cap->lfd);
    httpc_destroy(h);
    event_base_free(eb);

    /* the request line: path-style, the key's segments encoded once */
    assert_true(strncmp(cap->req,
                        "PUT /bucket-1/p%20q/rudder-logs/src-1/2023-11-14/"
                        "1700000000.src-1.id.json.gz HTTP/1.1\r\n",
                        strlen("PUT /bucket-1/p%20q/rudder-logs/src-1/2023-11-14/"
                               "1700000000.src-1.id.json.gz HTTP/1.1\r\n")) == 0);
    char hash[65], sha_hdr[128], date[64], host[64], ctype[64], auth[512];
    httpc_sha256_hex(body, sizeof body - 1, hash);
    header(cap->req, "x-amz-content-sha256", sha_hdr, sizeof sha_hdr);
    assert_string_equal(sha_hdr, hash); /* libcurl does not send it on its own */
    header(cap->req, "x-amz-date", date, sizeof date);
    header(cap->req, "host", host, sizeof host);
    header(cap->req, "content-type", ctype, sizeof ctype);
    header(cap->req, "authorization", auth, sizeof auth);
    assert_string_equal(ctype, "application/gzip");
    assert_int_equal(strlen(date), 16);
    /* the body arrived whole */
    const char *b = strstr(cap->req, "\r\n\r\n") + 4;
    assert_int_equal(cap->len - (size_t)(b - cap->req), sizeof body - 1);
    assert_memory_equal(b, body, sizeof body - 1);
    /* signed: exactly these headers (no removed "expect:", which libcurl
     * 7.88 would otherwise sign and a server then refuses) */
    const char *signed_headers = "content-type;host;x-amz-content-sha256;x-amz-date";
    char want_prefix[256];
    snprintf(want_prefix, sizeof want_prefix,
             "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/%.8s/eu-central-1/s3/aws4_request, "
             "SignedHeaders=%s, Signature=",
             date, signed_headers);
    assert_true(strncmp(auth, want_prefix, strlen(want_prefix)) == 0);
    char canon_headers[1024], sig[65];
    snprintf(canon_headers, sizeof canon_headers,
             "content-type:%s\nhost:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n", ctype, host,
             hash, date);
    sigv4("PUT", "/bucket-1/p%20q/rudder-logs/src-1/2023-11-14/1700000000.src-1.id.json.gz", "",
          canon_headers, signed_headers, hash, date, "eu-central-1", "s3cr3t/KEY+x", sig);
    assert_string_equal(auth + strlen(want_prefix), sig);
    free(cap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_signer_aws_example),
        cmocka_unit_test(test_key_format),
        cmocka_unit_test(test_archive_key_format),
        cmocka_unit_test(test_url_encoding),
        cmocka_unit_test(test_gzip_deterministic),
        cmocka_unit_test(test_minio_config),
        cmocka_unit_test(test_error_code),
        cmocka_unit_test(test_signed_put),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
