/* The start of every pintle service's main(): command line, configuration,
 * logging, SIGPIPE. Owns nothing; cfg is the caller's. */
#ifndef COMMON_SVC_H
#define COMMON_SVC_H

#include "common/cfg.h"
#include "common/err.h"

struct event_base;

/* Parses -c/--config PATH, --check-config and --help; loads the
 * configuration into cfg; initialises logging as service name; ignores
 * SIGPIPE. Returns -1 when the service should run, else the exit code to
 * return (0 after --check-config or --help, 2 for bad usage or an invalid
 * configuration, which is logged). cfg_deinit(cfg) is the caller's either way. */
int svc_start(int argc, char **argv, const char *name, Config *cfg);

/* Exit code of a service that stops on a configuration error found at run
 * time (e.g. queue.partitions differs from the installed schema); the
 * gateway's supervisor does not restart a worker that exits with it. */
#define SVC_EXIT_CONFIG 2

/* What svc_on_db_fatal needs: the loop to stop and where to put the code. */
typedef struct SvcFatal {
    struct event_base *base;
    int code; /* 0 until a fatal error */
} SvcFatal;

/* A DbFatalCb (db_pool_expect_partitions): logs startup_failed with the
 * reason, sets code to SVC_EXIT_CONFIG and breaks the loop. arg: SvcFatal. */
void svc_on_db_fatal(void *arg, const Err *err);

#endif
