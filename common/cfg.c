#include "common/cfg.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hint.h"
#include "common/log.h"
#include "common/xalloc.h"

typedef enum CfgType { CFG_INT, CFG_STR, CFG_BOOL } CfgType;

typedef struct CfgKey {
    const char *section;
    const char *key;
    CfgType type;
    size_t offset;
    const char *def;
    long min, max;
    bool secret;
    const char *doc;
} CfgKey;

#define I(sec, k, field, d, lo, hi, doc)                                                           \
    {sec, k, CFG_INT, offsetof(Config, field), d, lo, hi, false, doc}
#define S(sec, k, field, d, doc)  {sec, k, CFG_STR, offsetof(Config, field), d, 0, 0, false, doc}
#define SS(sec, k, field, d, doc) {sec, k, CFG_STR, offsetof(Config, field), d, 0, 0, true, doc}
#define B(sec, k, field, d, doc)  {sec, k, CFG_BOOL, offsetof(Config, field), d, 0, 1, false, doc}

static const CfgKey keys[] = {
    S("log", "level", log.level, "info", "log level: debug, info, warn or error"),

    SS("db", "dsn", db.dsn, "",
       "libpq connection string or URI; empty uses the standard PG* environment variables"),
    S("db", "schema", db.schema, "pintle", "schema holding the jobs tables"),
    I("db", "pool_size", db.pool_size, "4", 1, 64, "connections per process"),
    I("db", "connect_timeout_ms", db.connect_timeout_ms, "5000", 100, 600000,
      "give up a connection attempt after this long"),
    I("db", "reconnect_max_ms", db.reconnect_max_ms, "2000", 10, 60000,
      "cap of the reconnect backoff"),
    I("db", "dead_peer_ms", db.dead_peer_ms, "10000", 1000, 600000,
      "drop a connection whose server stopped answering at the TCP level (half-open link,"
      " vanished host) after about this long: TCP keepalives and tcp_user_timeout"),

    I("queue", "partitions", queue.partitions, "64", 1, 4096,
      "partitions per queue; fixed at install (migrate) time"),
    I("queue", "dataset_max_mb", queue.dataset_max_mb, "256", 1, 1048576,
      "rotate a queue's newest dataset once its table is this large (MiB)"),
    I("queue", "dataset_max_age_s", queue.dataset_max_age_s, "3600", 1, 604800,
      "rotate a queue's newest dataset once it is this old and not empty"),
    I("queue", "maintenance_interval_ms", queue.maintenance_interval_ms, "5000", 100, 3600000,
      "how often rotation and dropping of consumed datasets run"),

    B("hints", "enabled", hints.enabled, "true", "publish and subscribe to nanomsg wake-up hints"),
    S("hints", "bind", hints.bind, "ipc:///tmp/pintle-%s-%p.ipc",
      "endpoint each processor, router and batchrouter instance binds to receive hints; %s is"
      " the stage, %p the pid, %h the host name (e.g. tcp://0.0.0.0:7070 across hosts)"),
    S("hints", "advertise", hints.advertise, "",
      "endpoint written to the instances table for producers to connect to (e.g."
      " tcp://10.0.0.5:7070); empty: the bound one, a wildcard tcp host replaced by the host"
      " name"),
    S("hints", "processor_endpoints", hints.processor_endpoints, "",
      "comma-separated processor endpoints gateways always connect to, besides discovered ones"),
    S("hints", "router_endpoints", hints.router_endpoints, "",
      "comma-separated router endpoints processors always connect to, besides discovered ones"),
    S("hints", "batchrouter_endpoints", hints.batchrouter_endpoints, "",
      "comma-separated batchrouter endpoints processors always connect to, besides discovered"
      " ones"),
    I("hints", "discovery_interval_ms", hints.discovery_interval_ms, "3000", 0, 3600000,
      "how often producers look up the live consumers' endpoints in the instances table; 0: only"
      " the static lists"),

    I("lease", "ttl_ms", lease.ttl_ms, "10000", 1000, 600000,
      "a partition lease not renewed for this long may be taken by another instance of the"
      " stage; also the longest a killed instance's partitions wait"),
    I("lease", "renew_interval_ms", lease.renew_interval_ms, "2000", 100, 300000,
      "how often an instance heartbeats, renews its leases and rebalances (at most a third of"
      " ttl_ms)"),
    I("lease", "rebalance_max_moves", lease.rebalance_max_moves, "8", 1, 4096,
      "partitions an instance gives back per renewal when another instance needs them"
      " (free ones are taken at once)"),

    I("ops", "poll_interval_ms", ops.poll_interval_ms, "1000", 100, 60000,
      "how often processors, routers and batchrouters read the mode (normal/degraded) and the"
      " paused destinations, and check the automatic degraded trigger"),
    I("ops", "stats_interval_ms", ops.stats_interval_ms, "5000", 500, 3600000,
      "how often each consuming instance computes queue depth and lag of the partitions it"
      " leases for /metrics (never per scrape)"),
    I("ops", "stats_cap", ops.stats_cap, "10000", 1, 100000000,
      "pending jobs counted per partition for queue depth; beyond it the gauge is a lower bound"
      " (cost bounded by the cap, not the table)"),
    I("ops", "restart_limit", ops.restart_limit, "5", 0, 100000,
      "switch to degraded mode when one stage crashed (exited without a graceful stop) more"
      " than this many times within restart_window_s, counted across all hosts; 0 disables"),
    I("ops", "restart_window_s", ops.restart_window_s, "600", 10, 86400,
      "window of the automatic degraded trigger (restart_limit)"),
    I("ops", "metrics_publish_ms", ops.metrics_publish_ms, "1000", 100, 60000,
      "with gateway.workers > 1, how often each worker publishes its metrics for the others'"
      " /metrics (one scrape shows every worker)"),

    S("workspace", "path", workspace.path, "workspaceConfig.json",
      "RudderStack workspace-config JSON export; polled and reloaded when it changes"),
    I("workspace", "poll_interval_ms", workspace.poll_interval_ms, "1000", 50, 3600000,
      "how often the workspace config file (or control plane) is checked"),
    S("workspace", "control_plane_url", workspace.control_plane_url, "",
      "optional URL to fetch the workspace config from instead of the file"),
    SS("workspace", "control_plane_token", workspace.control_plane_token, "",
       "workspace token sent as the Basic-auth user to the control plane"),

    S("gateway", "listen_address", gateway.listen_address, "0.0.0.0", "address the gateway binds"),
    I("gateway", "port", gateway.port, "8080", 1, 65535, "ingestion HTTP port"),
    I("gateway", "workers", gateway.workers, "1", 1, 64,
      "worker processes sharing the port with SO_REUSEPORT"),
    I("gateway", "max_body_bytes", gateway.max_body_bytes, "4096000", 1024, 1073741824,
      "largest accepted request body (after gzip decoding too); larger is 413"),
    I("gateway", "batch_max_events", gateway.batch_max_events, "1000", 1, 100000,
      "events per group-commit batch (one COPY per transaction)"),
    I("gateway", "batch_max_wait_ms", gateway.batch_max_wait_ms, "2", 0, 10000,
      "how long a non-full batch may wait for more events when no write is idle"),
    I("gateway", "max_inflight_batches", gateway.max_inflight_batches, "3", 1, 64,
      "batches being written at once (bounded by db.pool_size)"),
    I("gateway", "max_backlog_events", gateway.max_backlog_events, "50000", 1, 10000000,
      "events buffered in memory waiting for a write; beyond it requests get 503"),
    I("gateway", "rate_limit_events_per_s", gateway.rate_limit_events_per_s, "0", 0, 100000000,
      "per-workspace event rate limit (token bucket); 0 disables it"),
    I("gateway", "rate_limit_burst", gateway.rate_limit_burst, "0", 0, 100000000,
      "token bucket size; 0 means one second's worth"),
    I("gateway", "shutdown_timeout_ms", gateway.shutdown_timeout_ms, "15000", 100, 600000,
      "on SIGTERM, how long to keep flushing before giving up with 503s"),
    I("gateway", "db_retry_ms", gateway.db_retry_ms, "1000", 0, 600000,
      "a request waits at most this long (from its arrival) for a successful write, also while"
      " no database connection is up; then 503"),
    I("gateway", "max_backlog_bytes", gateway.max_backlog_bytes, "67108864", 65536, 2147483647,
      "bytes of rows buffered in memory waiting for a write; beyond it requests get 503, and a"
      " request larger than this alone gets 413"),
    I("gateway", "commit_verify_ms", gateway.commit_verify_ms, "10000", 100, 600000,
      "when the connection is lost during a COMMIT, how long to try to learn whether it"
      " committed (pg_xact_status) before answering 503"),
    I("gateway", "max_header_bytes", gateway.max_header_bytes, "65536", 1024, 16777216,
      "largest request line plus headers; larger requests are refused with 400"),
    I("gateway", "max_connections", gateway.max_connections, "0", 0, 1000000,
      "open client connections per worker; beyond it new ones wait in the listen queue;"
      " 0: the file-descriptor limit minus a reserve"),
    I("gateway", "request_timeout_ms", gateway.request_timeout_ms, "30000", 100, 3600000,
      "a request (headers and body) must arrive within this time of its first byte, else the"
      " connection is closed"),
    I("gateway", "idle_timeout_ms", gateway.idle_timeout_ms, "60000", 100, 3600000,
      "close a keep-alive connection that sends nothing for this long"),
    I("gateway", "max_partial_request_bytes", gateway.max_partial_request_bytes, "67108864",
      65536, 2147483647,
      "bytes of requests still being received, all connections together; beyond it reading"
      " pauses until requests complete"),

    S("processor", "listen_address", processor.listen_address, "127.0.0.1",
      "address of the processor's /health and /metrics"),
    I("processor", "admin_port", processor.admin_port, "8086", 0, 65535,
      "port of the processor's /health and /metrics; 0 disables"),
    S("processor", "transformer_url", processor.transformer_url, "http://127.0.0.1:9090",
      "base URL of the rudder-transformer compatible service"),
    I("processor", "claim_batch", processor.claim_batch, "1000", 1, 100000,
      "gw jobs claimed per cycle"),
    I("processor", "transform_chunk", processor.transform_chunk, "200", 1, 10000,
      "events per transformer request"),
    I("processor", "max_inflight", processor.max_inflight, "4", 1, 256,
      "transformer requests in flight at once"),
    I("processor", "transformer_timeout_ms", processor.transformer_timeout_ms, "30000", 100,
      600000, "timeout of one transformer request"),
    I("processor", "user_transform_timeout_ms", processor.user_transform_timeout_ms, "60000", 100,
      600000,
      "timeout of one /customTransform request (user transformations); keep it above the"
      " transformer's USER_TRANSFORM_TIMEOUT plus its code fetch, or a slow transformation is"
      " retried instead of failed"),
    I("processor", "retry_max_backoff_ms", processor.retry_max_backoff_ms, "5000", 10, 600000,
      "cap of the backoff while the transformer fails"),
    I("processor", "poll_interval_ms", processor.poll_interval_ms, "300", 1, 60000,
      "poll period when idle (hints wake it sooner)"),
    I("processor", "max_transformer_request_bytes", processor.max_transformer_request_bytes,
      "16777216", 65536, 1073741824,
      "a transformer request closes at this many bytes (or transform_chunk events); a 413"
      " answer splits it"),
    I("processor", "max_transformer_response_bytes", processor.max_transformer_response_bytes,
      "67108864", 1024, 1073741824,
      "largest transformer answer read; a larger one splits its chunk in halves and retries"),
    I("processor", "shutdown_timeout_ms", processor.shutdown_timeout_ms, "10000", 100, 600000,
      "on SIGTERM, exit within this long whatever the transformer and database do"),

    S("router", "listen_address", router.listen_address, "127.0.0.1",
      "address of the router's /health and /metrics"),
    I("router", "admin_port", router.admin_port, "8087", 0, 65535,
      "port of the router's /health and /metrics; 0 disables"),
    I("router", "claim_batch", router.claim_batch, "2000", 1, 100000, "rt jobs claimed per cycle"),
    I("router", "max_concurrency_per_destination", router.max_concurrency_per_destination, "32",
      1, 1024,
      "requests in flight per destination, per router instance (N routers: up to N times this)"),
    I("router", "timeout_ms", router.timeout_ms, "30000", 100, 600000,
      "timeout of one delivery request"),
    I("router", "retry_initial_s", router.retry_initial_s, "10", 0, 86400,
      "first retry delay; doubles per attempt"),
    I("router", "retry_max_s", router.retry_max_s, "300", 0, 86400, "cap of the retry delay"),
    I("router", "max_attempts", router.max_attempts, "3", 1, 1000,
      "abort once this many attempts AND max_retry_minutes have passed"),
    I("router", "max_retry_minutes", router.max_retry_minutes, "180", 0, 100000,
      "abort once this long since the first failure AND max_attempts have passed"),
    I("router", "poll_interval_ms", router.poll_interval_ms, "300", 1, 60000,
      "poll period when idle (hints wake it sooner)"),
    I("router", "max_pending_jobs", router.max_pending_jobs, "10000", 10, 10000000,
      "jobs held in memory awaiting delivery before claiming pauses (per router instance)"),
    I("router", "max_pending_jobs_per_destination", router.max_pending_jobs_per_destination, "5000",
      1, 10000000,
      "undelivered jobs held in memory per destination and router instance; beyond it they wait"
      " in rt_retries"),
    I("router", "spill_after_ms", router.spill_after_ms, "5000", 10, 3600000,
      "a user whose undelivered job holds its partition's cursor this long waits in rt_retries"),
    I("router", "flush_interval_ms", router.flush_interval_ms, "100", 0, 60000,
      "least time between two status flushes (outcomes and cursors are batched)"),
    I("router", "shutdown_timeout_ms", router.shutdown_timeout_ms, "10000", 100, 600000,
      "on SIGTERM, deliveries still in flight shortly before this are cancelled; exit by then"),
    S("router", "connect_to", router.connect_to, "",
      "comma-separated libcurl CONNECT_TO entries HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT"
      " (e.g. api2.amplitude.com:443:127.0.0.1:9443): deliveries keep their URL, Host and TLS"
      " name, the connection goes elsewhere (tests, relays); empty: none"),
    S("router", "ca_file", router.ca_file, "",
      "PEM file of the CAs destination servers are verified with; empty: the system's"),
    S("router", "transformer_url", router.transformer_url, "http://127.0.0.1:9090",
      "transformer the router calls for /batch, /routerTransform and the delivery proxy"),
    S("router", "batch_destination_types", router.batch_destination_types, "",
      "comma-separated destination types (destinationDefinition.name, e.g. AM) whose jobs are"
      " merged by the transformer's /batch and delivered in batches (RudderStack's"
      " Router.<TYPE>.enableBatching); empty: none"),
    I("router", "batch_max_jobs", router.batch_max_jobs, "20", 1, 500,
      "jobs of one destination sent to /batch together, at most"),
    I("router", "batch_max_wait_ms", router.batch_max_wait_ms, "500", 0, 60000,
      "longest a ready job waits for its batch to fill"),
    I("router", "router_transform_max_jobs", router.router_transform_max_jobs, "20", 1, 500,
      "jobs of one transformAt router destination sent to /routerTransform together, at most"
      " (RudderStack's Router.noOfJobsToBatchInAWorker)"),
    I("router", "router_transform_max_wait_ms", router.router_transform_max_wait_ms, "500", 0,
      60000, "longest a ready job of a transformAt router destination waits for its"
      " /routerTransform request to fill"),
    S("router", "proxy_destination_types", router.proxy_destination_types, "",
      "comma-separated destination types (e.g. AM,GA4) delivered through the transformer's"
      " POST /v1/destinations/<type>/proxy, whose answer decides ok, retry or abort;"
      " empty: none"),

    S("batchrouter", "listen_address", batchrouter.listen_address, "127.0.0.1",
      "address of the batchrouter's /health and /metrics"),
    I("batchrouter", "admin_port", batchrouter.admin_port, "8088", 0, 65535,
      "port of the batchrouter's /health and /metrics; 0 disables"),
    I("batchrouter", "upload_interval_s", batchrouter.upload_interval_s, "30", 0, 86400,
      "a (source, destination) with pending events uploads at least this often"),
    I("batchrouter", "max_events", batchrouter.max_events, "10000", 1, 1000000,
      "events per batch; a full batch uploads at once"),
    I("batchrouter", "max_bytes", batchrouter.max_bytes, "67108864", 1024, 1073741824,
      "uncompressed bytes per batch (about: the event crossing it is the last); a full batch"
      " uploads at once"),
    I("batchrouter", "poll_interval_ms", batchrouter.poll_interval_ms, "1000", 10, 60000,
      "how often each (source, destination) looks for a batch to plan (hints wake it sooner)"),
    I("batchrouter", "timeout_ms", batchrouter.timeout_ms, "120000", 100, 3600000,
      "timeout of one object upload"),
    I("batchrouter", "retry_initial_ms", batchrouter.retry_initial_ms, "1000", 10, 3600000,
      "first retry delay of a failed batch; doubles per attempt"),
    I("batchrouter", "retry_max_ms", batchrouter.retry_max_ms, "60000", 10, 86400000,
      "cap of the retry delay"),
    I("batchrouter", "max_retry_minutes", batchrouter.max_retry_minutes, "180", 0, 100000,
      "a batch still failing this long after its first failure goes to dead letters"),
    I("batchrouter", "max_retry_ms", batchrouter.max_retry_ms, "0", 0, 2147483647,
      "the same window in milliseconds, when not 0 (wins over max_retry_minutes; for tests)"),
    S("batchrouter", "s3_endpoint_override", batchrouter.s3_endpoint_override, "",
      "base URL (e.g. http://127.0.0.1:7480) used for S3 destinations instead of AWS; path-style"
      " requests. A destination's own endPoint wins"),
    I("batchrouter", "warehouse_connect_timeout_s", batchrouter.warehouse_connect_timeout_s, "10", 1,
      3600, "connect timeout of a warehouse (POSTGRES destination) connection"),
    I("batchrouter", "warehouse_statement_timeout_ms", batchrouter.warehouse_statement_timeout_ms,
      "600000", 100, 86400000, "statement timeout of a warehouse load"),
    I("batchrouter", "shutdown_timeout_ms", batchrouter.shutdown_timeout_ms, "10000", 100, 600000,
      "on SIGTERM, uploads still in flight shortly before this are cancelled; exit by then"),

    B("archive", "enabled", archive.enabled, "true",
      "archive the gw events of workspaces whose settings.dataRetention.storagePreferences"
      ".gatewayDumps is true (RudderStack's jobs backup) before their dataset is dropped;"
      " false: never, whatever the workspace says"),
    I("archive", "upload_interval_s", archive.upload_interval_s, "300", 0, 86400,
      "a source with events to archive writes an object at least this often"
      " (RudderStack's archival.UploadFrequency)"),
    I("archive", "max_events", archive.max_events, "10000", 1, 1000000,
      "events per archive object; a full one is written at once"),
    I("archive", "max_bytes", archive.max_bytes, "33554432", 1024, 1073741824,
      "uncompressed bytes per archive object (about)"),
    S("archive", "instance_id", archive.instance_id, "1",
      "the instance segment of archive object keys (RudderStack's INSTANCE_ID)"),
    S("archive", "storage_provider", archive.storage_provider, "",
      "the default archive bucket's type for workspaces without useSelfStorage: S3, MINIO or"
      " DIGITAL_OCEAN_SPACES (RudderStack's JOBS_BACKUP_STORAGE_PROVIDER); empty: none, such"
      " workspaces are not archived"),
    S("archive", "bucket", archive.bucket, "", "the default archive bucket (JOBS_BACKUP_BUCKET)"),
    S("archive", "prefix", archive.prefix, "",
      "key prefix in the default archive bucket (JOBS_BACKUP_PREFIX)"),
    S("archive", "endpoint", archive.endpoint, "",
      "host:port of the default bucket's server (MINIO, DIGITAL_OCEAN_SPACES, or S3 not on"
      " AWS)"),
    S("archive", "access_key_id", archive.access_key_id, "",
      "access key id for the default archive bucket"),
    SS("archive", "secret_access_key", archive.secret_access_key, "",
       "secret for the default archive bucket"),
    S("archive", "region", archive.region, "us-east-1", "region of the default archive bucket"),
    B("archive", "use_ssl", archive.use_ssl, "false",
      "HTTPS to the default bucket's endpoint (MINIO)"),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static void *field(Config *cfg, const CfgKey *k)
{
    return (char *)cfg + k->offset;
}

static int set_value(Config *cfg, const CfgKey *k, const char *v, const char *where, Err *err)
{
    if (k->type == CFG_STR) {
        char **p = field(cfg, k);
        free(*p);
        *p = xstrdup(v);
        return 0;
    }
    if (k->type == CFG_BOOL) {
        bool *p = field(cfg, k);
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0)
            *p = true;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "no") == 0)
            *p = false;
        else
            return err_set(err, ERR_INVALID, "%s: %s.%s must be true or false, not \"%s\"", where,
                           k->section, k->key, v);
        return 0;
    }
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0')
        return err_set(err, ERR_INVALID, "%s: %s.%s must be an integer, not \"%s\"", where,
                       k->section, k->key, v);
    if (n < k->min || n > k->max)
        return err_set(err, ERR_INVALID, "%s: %s.%s=%ld is out of range [%ld, %ld]", where,
                       k->section, k->key, n, k->min, k->max);
    *(int *)field(cfg, k) = (int)n;
    return 0;
}

static const CfgKey *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

static bool known_section(const char *section)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0)
            return true;
    return false;
}

static int load_file(Config *cfg, const char *path, Err *err)
{
    config_t lc;
    config_init(&lc);
    int rc = 0;
    if (config_read_file(&lc, path) != CONFIG_TRUE) {
        if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
            rc = err_set(err, ERR_IO, "could not read config file \"%s\"", path);
        else
            rc = err_set(err, ERR_INVALID, "%s:%d: %s",
                         config_error_file(&lc) ? config_error_file(&lc) : path,
                         config_error_line(&lc), config_error_text(&lc));
        goto out;
    }
    config_setting_t *root = config_root_setting(&lc);
    for (int i = 0; i < config_setting_length(root); i++) {
        config_setting_t *sec = config_setting_get_elem(root, (unsigned)i);
        const char *sname = config_setting_name(sec);
        int sline = config_setting_source_line(sec);
        if (!known_section(sname)) {
            rc = err_set(err, ERR_INVALID, "%s:%d: unknown section \"%s\"", path, sline, sname);
            goto out;
        }
        if (!config_setting_is_group(sec)) {
            rc = err_set(err, ERR_INVALID, "%s:%d: \"%s\" must be a group { ... }", path, sline,
                         sname);
            goto out;
        }
        for (int j = 0; j < config_setting_length(sec); j++) {
            config_setting_t *s = config_setting_get_elem(sec, (unsigned)j);
            const char *kname = config_setting_name(s);
            int line = config_setting_source_line(s);
            char where[512];
            snprintf(where, sizeof(where), "%s:%d", path, line);
            const CfgKey *k = find_key(sname, kname);
            if (k == NULL) {
                rc = err_set(err, ERR_INVALID, "%s: unknown key \"%s.%s\"", where, sname, kname);
                goto out;
            }
            char tmp[64];
            const char *v = NULL;
            switch (config_setting_type(s)) {
            case CONFIG_TYPE_STRING: v = config_setting_get_string(s); break;
            case CONFIG_TYPE_INT:
                snprintf(tmp, sizeof(tmp), "%d", config_setting_get_int(s));
                v = tmp;
                break;
            case CONFIG_TYPE_INT64:
                snprintf(tmp, sizeof(tmp), "%lld", config_setting_get_int64(s));
                v = tmp;
                break;
            case CONFIG_TYPE_BOOL: v = config_setting_get_bool(s) ? "true" : "false"; break;
            default:
                rc = err_set(err, ERR_INVALID, "%s: %s.%s has an unsupported type", where, sname,
                             kname);
                goto out;
            }
            if ((k->type == CFG_STR) != (config_setting_type(s) == CONFIG_TYPE_STRING)) {
                rc = err_set(err, ERR_INVALID, "%s: %s.%s must be %s", where, sname, kname,
                             k->type == CFG_STR    ? "a string"
                             : k->type == CFG_BOOL ? "true or false"
                                                   : "an integer");
                goto out;
            }
            rc = set_value(cfg, k, v, where, err);
            if (rc < 0)
                goto out;
        }
    }
out:
    config_destroy(&lc);
    return rc;
}

static void env_name(const CfgKey *k, char *out, size_t n)
{
    snprintf(out, n, "PINTLE_%s_%s", k->section, k->key);
    for (char *p = out; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

int cfg_load(Config *cfg, const char *path, Err *err)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++) {
        int rc = set_value(cfg, &keys[i], keys[i].def, "default", err);
        ASSERT(rc == 0);
    }
    if (path == NULL) {
        const char *envp = getenv("PINTLE_CONFIG");
        if (envp != NULL && envp[0] != '\0')
            path = envp;
    }
    if (path != NULL) {
        int rc = load_file(cfg, path, err);
        if (rc < 0)
            return rc;
    }
    for (size_t i = 0; i < NKEYS; i++) {
        char name[128];
        env_name(&keys[i], name, sizeof(name));
        const char *v = getenv(name);
        if (v == NULL)
            continue;
        char where[160];
        snprintf(where, sizeof(where), "environment %s", name);
        int rc = set_value(cfg, &keys[i], v, where, err);
        if (rc < 0)
            return rc;
    }
    if (log_level_parse(cfg->log.level) < 0)
        return err_set(err, ERR_INVALID, "log.level must be debug, info, warn or error, not \"%s\"",
                       cfg->log.level);
    for (const char *p = cfg->db.schema; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_'))
            return err_set(err, ERR_INVALID,
                           "db.schema \"%s\" may only contain lower-case letters, digits and _",
                           cfg->db.schema);
    char ep[512];
    if (hint_format_endpoint(ep, sizeof ep, cfg->hints.bind, "stage", err) < 0)
        return err_prefix(err, "hints.bind");
    if (hint_format_endpoint(ep, sizeof ep, cfg->hints.advertise, "stage", err) < 0)
        return err_prefix(err, "hints.advertise");
    if ((long)cfg->lease.renew_interval_ms * 3 > cfg->lease.ttl_ms)
        return err_set(err, ERR_INVALID,
                       "lease.renew_interval_ms (%d) must be at most a third of lease.ttl_ms (%d),"
                       " so a lease survives a renewal that fails once",
                       cfg->lease.renew_interval_ms, cfg->lease.ttl_ms);
    if (cfg->gateway.max_inflight_batches > cfg->db.pool_size)
        cfg->gateway.max_inflight_batches = cfg->db.pool_size;
    return 0;
}

void cfg_deinit(Config *cfg)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].type == CFG_STR) {
            char **p = field(cfg, &keys[i]);
            free(*p);
            *p = NULL;
        }
}

void cfg_format(const Config *cfg, Buf *out)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const CfgKey *k = &keys[i];
        const void *f = (const char *)cfg + k->offset;
        buf_printf(out, "%s.%s=", k->section, k->key);
        if (k->type == CFG_INT) {
            buf_printf(out, "%d\n", *(const int *)f);
        } else if (k->type == CFG_BOOL) {
            buf_printf(out, "%s\n", *(const bool *)f ? "true" : "false");
        } else {
            const char *s = *(char *const *)f;
            char masked[1024];
            if (k->secret && strcmp(k->key, "dsn") == 0) {
                log_mask_dsn(masked, sizeof(masked), s);
                s = masked;
            } else if (k->secret && s[0] != '\0') {
                s = "***";
            }
            buf_printf(out, "\"%s\"\n", s);
        }
    }
}

void cfg_format_doc(Buf *out)
{
    buf_puts(out, "# pintle.conf: configuration shared by every pintle executable (libconfig).\n"
                  "# Every key is shown at its default. Each key can be overridden by the\n"
                  "# environment variable PINTLE_<SECTION>_<KEY>, e.g. PINTLE_DB_DSN.\n"
                  "# Generated by `pintlectl config-doc`; tests check it is up to date.\n");
    const char *section = NULL;
    for (size_t i = 0; i < NKEYS; i++) {
        const CfgKey *k = &keys[i];
        if (section == NULL || strcmp(section, k->section) != 0) {
            if (section != NULL)
                buf_puts(out, "};\n");
            buf_printf(out, "\n%s = {\n", k->section);
            section = k->section;
        }
        buf_printf(out, "  # %s", k->doc);
        if (k->type == CFG_INT)
            buf_printf(out, " (%ld..%ld)\n  %s = %s;\n", k->min, k->max, k->key, k->def);
        else if (k->type == CFG_BOOL)
            buf_printf(out, "\n  %s = %s;\n", k->key, k->def);
        else
            buf_printf(out, "\n  %s = \"%s\";\n", k->key, k->def);
    }
    if (section != NULL)
        buf_puts(out, "};\n");
}
