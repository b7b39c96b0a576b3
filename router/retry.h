/* The router's retry policy (DESIGN §6): when a failed delivery is tried
 * again and when it is given up. Pure functions over the router config;
 * used by the engine, unit-tested. */
#ifndef ROUTER_RETRY_H
#define ROUTER_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cfg.h"

typedef struct RetryPolicy {
    int64_t initial_ms;   /* delay after the first failed attempt */
    int64_t max_ms;       /* cap of the doubling delay */
    int max_attempts;     /* give up only after this many attempts ... */
    int64_t max_retry_ms; /* ... and this long since the first failure */
} RetryPolicy;

RetryPolicy retry_policy(const RouterConfig *rc);

/* Delay before the next attempt once `attempts` (>= 1) attempts failed:
 * initial_ms doubling per attempt, at most max_ms. */
int64_t retry_delay_ms(const RetryPolicy *p, int attempts);

/* True when a job whose `attempts` attempts failed, the first at
 * first_failed_ms, is given up: both max_attempts and max_retry_ms passed. */
bool retry_exhausted(const RetryPolicy *p, int attempts, int64_t first_failed_ms, int64_t now_ms);

#endif
