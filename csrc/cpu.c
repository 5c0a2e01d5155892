/* How many CPUs we may use: decides whether spinning before sleeping can ever pay off. */
#define _GNU_SOURCE
#include <sched.h>

#include "internal.h"

int ng_cpu_count(void)
{
    static int cached; /* 0: not computed yet; racing computations store the same value */
    int n = ng_atomic_load(&cached, NG_RELAXED);
    if (n > 0)
        return n;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0)
        n = 1;
    ng_atomic_store(&cached, n, NG_RELAXED);
    return n;
}
