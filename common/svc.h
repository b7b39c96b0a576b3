/* The start of every pintle service's main(): command line, configuration,
 * logging, SIGPIPE. Owns nothing; cfg is the caller's. */
#ifndef COMMON_SVC_H
#define COMMON_SVC_H

#include "common/cfg.h"

/* Parses -c/--config PATH, --check-config and --help; loads the
 * configuration into cfg; initialises logging as service name; ignores
 * SIGPIPE. Returns -1 when the service should run, else the exit code to
 * return (0 after --check-config or --help, 2 for bad usage or an invalid
 * configuration, which is logged). cfg_deinit(cfg) is the caller's either way. */
int svc_start(int argc, char **argv, const char *name, Config *cfg);

#endif
