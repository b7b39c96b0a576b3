#include "common/svc.h"

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "common/log.h"

static void usage(FILE *f, const char *name)
{
    fprintf(f,
            "usage: %s [-c pintle.conf] [--check-config]\n"
            "  -c, --config PATH   configuration file (default: $PINTLE_CONFIG or none)\n"
            "      --check-config  validate the configuration, print it and exit\n",
            name);
}

int svc_start(int argc, char **argv, const char *name, Config *cfg)
{
    const char *path = NULL;
    bool check = false;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check-config", no_argument, NULL, 'C'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int o;
    memset(cfg, 0, sizeof(*cfg));
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'C': check = true; break;
        case 'h': usage(stdout, name); return 0;
        default: usage(stderr, name); return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    log_init(name, LOG_INFO);
    Err err;
    if (cfg_load(cfg, path, &err) < 0) {
        char q[1100];
        log_error("config_invalid", "error=%s", log_quote(q, sizeof q, err.msg));
        return 2;
    }
    log_init(name, (LogLevel)log_level_parse(cfg->log.level));
    if (check) {
        Buf b;
        buf_init(&b);
        cfg_format(cfg, &b);
        fputs(b.data, stdout);
        buf_deinit(&b);
        return 0;
    }
    return -1;
}

void svc_on_db_fatal(void *arg, const Err *err)
{
    SvcFatal *f = arg;
    char q[1100];
    log_error("startup_failed", "step=schema_check error=%s", log_quote(q, sizeof q, err->msg));
    f->code = SVC_EXIT_CONFIG;
    event_base_loopbreak(f->base);
}
