#include "router/retry.h"

RetryPolicy retry_policy(const RouterConfig *rc)
{
    RetryPolicy p = {(int64_t)rc->retry_initial_s * 1000, (int64_t)rc->retry_max_s * 1000,
                     rc->max_attempts, (int64_t)rc->max_retry_minutes * 60000};
    return p;
}

int64_t retry_delay_ms(const RetryPolicy *p, int attempts)
{
    int64_t delay = p->initial_ms;
    for (int i = 1; i < attempts && delay < p->max_ms; i++)
        delay *= 2;
    return delay > p->max_ms ? p->max_ms : delay;
}

bool retry_exhausted(const RetryPolicy *p, int attempts, int64_t first_failed_ms, int64_t now_ms)
{
    return attempts >= p->max_attempts && now_ms - first_failed_ms >= p->max_retry_ms;
}
