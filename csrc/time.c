/* Monotonic clock and deadlines. */
#include "internal.h"

int64_t ng_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NG_NS_PER_SEC + ts.tv_nsec;
}

int64_t ng_deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return NG_DEADLINE_NEVER;
    return ng_add_sat(ng_monotonic_ns(), timeout_ns);
}

int64_t ng_deadline_remaining(int64_t deadline)
{
    if (deadline == NG_DEADLINE_NEVER)
        return INT64_MAX;
    int64_t now = ng_monotonic_ns();
    return deadline > now ? deadline - now : 0;
}
