/* Process configuration: one libconfig file (pintle.conf) shared by every
 * executable, each key overridable by PINTLE_<SECTION>_<KEY>.
 * All keys are declared once in the table in cfg.c (name, type, default,
 * range, documentation); loading, env overrides, validation, the startup
 * summary, --check-config and the documented example file all come from it.
 * The whole system's keys live here (not per executable) so that any binary
 * can validate the one shared file and unknown keys are still errors. */
#ifndef COMMON_CFG_H
#define COMMON_CFG_H

#include <stdbool.h>

#include "common/buf.h"
#include "common/err.h"

typedef struct LogConfig {
    char *level;
} LogConfig;

typedef struct DbConfig {
    char *dsn;
    char *schema;
    int pool_size;
    int connect_timeout_ms;
    int reconnect_max_ms;
    int dead_peer_ms;
} DbConfig;

typedef struct QueueConfig {
    int partitions;
    int dataset_max_mb;
    int dataset_max_age_s;
    int maintenance_interval_ms;
} QueueConfig;

typedef struct HintsConfig {
    bool enabled;
    char *bind;
    char *advertise;
    char *processor_endpoints;
    char *router_endpoints;
    char *batchrouter_endpoints;
    int discovery_interval_ms;
} HintsConfig;

typedef struct LeaseConfig {
    int ttl_ms;
    int renew_interval_ms;
    int rebalance_max_moves;
} LeaseConfig;

/* Operations (common/ops.h): mode, pauses, automatic degraded mode, queue statistics. */
typedef struct OpsConfig {
    int poll_interval_ms;
    int stats_interval_ms;
    int stats_cap;
    int restart_limit;
    int restart_window_s;
    int metrics_publish_ms;
} OpsConfig;

typedef struct WorkspaceConfigCfg {
    char *path;
    int poll_interval_ms;
    char *control_plane_url;
    char *control_plane_token;
} WorkspaceConfigCfg;

typedef struct GatewayConfig {
    char *listen_address;
    int port;
    int workers;
    int max_body_bytes;
    int batch_max_events;
    int batch_max_wait_ms;
    int max_inflight_batches;
    int max_backlog_events;
    int rate_limit_events_per_s;
    int rate_limit_burst;
    int shutdown_timeout_ms;
    int db_retry_ms;
    int max_backlog_bytes;
    int commit_verify_ms;
    int max_header_bytes;
    int max_connections;
    int request_timeout_ms;
    int idle_timeout_ms;
    int max_partial_request_bytes;
} GatewayConfig;

typedef struct ProcessorConfig {
    char *listen_address;
    int admin_port;
    char *transformer_url;
    int claim_batch;
    int transform_chunk;
    int max_inflight;
    int transformer_timeout_ms;
    int user_transform_timeout_ms;
    int retry_max_backoff_ms;
    int poll_interval_ms;
    int max_transformer_request_bytes;
    int max_transformer_response_bytes;
    int shutdown_timeout_ms;
} ProcessorConfig;

typedef struct RouterConfig {
    char *listen_address;
    int admin_port;
    int claim_batch;
    int max_concurrency_per_destination;
    int timeout_ms;
    int retry_initial_s;
    int retry_max_s;
    int max_attempts;
    int max_retry_minutes;
    int poll_interval_ms;
    int max_pending_jobs;
    int max_pending_jobs_per_destination;
    int spill_after_ms;
    int flush_interval_ms;
    int shutdown_timeout_ms;
    char *connect_to;
    char *ca_file;
    char *transformer_url;
    char *batch_destination_types;
    int batch_max_jobs;
    int batch_max_wait_ms;
    int router_transform_max_jobs;
    int router_transform_max_wait_ms;
    char *proxy_destination_types;
} RouterConfig;

typedef struct BatchrouterConfig {
    char *listen_address;
    int admin_port;
    int upload_interval_s;
    int max_events;
    int max_bytes;
    int poll_interval_ms;
    int timeout_ms;
    int retry_initial_ms;
    int retry_max_ms;
    int max_retry_minutes;
    int max_retry_ms;
    char *s3_endpoint_override;
    int warehouse_connect_timeout_s;
    int warehouse_statement_timeout_ms;
    int shutdown_timeout_ms;
} BatchrouterConfig;

/* The raw archive of gw events (batchrouter, see sql/013_archive.sql). A
 * workspace asks for it with settings.dataRetention.storagePreferences.
 * gatewayDumps; its bucket is settings.dataRetention.storageBucket when
 * useSelfStorage, else the default bucket below. */
typedef struct ArchiveConfig {
    bool enabled;
    int upload_interval_s;
    int max_events;
    int max_bytes;
    char *instance_id;
    char *storage_provider; /* default bucket: "" none, S3, MINIO, DIGITAL_OCEAN_SPACES */
    char *bucket;
    char *prefix;
    char *endpoint;
    char *access_key_id;
    char *secret_access_key;
    char *region;
    bool use_ssl;
} ArchiveConfig;

typedef struct Config {
    LogConfig log;
    DbConfig db;
    QueueConfig queue;
    HintsConfig hints;
    LeaseConfig lease;
    OpsConfig ops;
    WorkspaceConfigCfg workspace;
    GatewayConfig gateway;
    ProcessorConfig processor;
    RouterConfig router;
    BatchrouterConfig batchrouter;
    ArchiveConfig archive;
} Config;

/* Loads defaults, then the file at path (NULL: $PINTLE_CONFIG if set, else no
 * file), then PINTLE_* environment overrides, then validates. On failure the
 * error names the file and line or the environment variable. cfg must be
 * released with cfg_deinit even on failure. */
MUST_CHECK int cfg_load(Config *cfg, const char *path, Err *err);
void cfg_deinit(Config *cfg);
/* Appends the effective configuration as "section.key=value" lines (secrets masked). */
void cfg_format(const Config *cfg, Buf *out);
/* Appends a fully documented pintle.conf with every key at its default. */
void cfg_format_doc(Buf *out);

#endif
