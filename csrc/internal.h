/* Private helpers shared by the C core; not part of the public API. */
#ifndef NOGIL_INTERNAL_H
#define NOGIL_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nogil.h"

/* Sleeps while *addr == val, until woken or the absolute CLOCK_MONOTONIC deadline
 * (NG_DEADLINE_NEVER: none). Returns 0 (woken, or the value had already changed: the caller
 * re-checks), ETIMEDOUT or EINTR. FUTEX_WAIT_BITSET takes an absolute deadline, so a retry
 * after a signal does not stretch the total wait. */
static inline int ng_futex_wait_until(uint32_t *addr, uint32_t val, int64_t deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    if (deadline_ns != NG_DEADLINE_NEVER) {
        ts.tv_sec = (time_t)(deadline_ns / NG_NS_PER_SEC);
        ts.tv_nsec = (long)(deadline_ns % NG_NS_PER_SEC);
        tsp = &ts;
    }
    long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val, tsp, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    if (r == 0)
        return 0;
    if (errno == ETIMEDOUT || errno == EINTR)
        return errno;
    return 0; /* EAGAIN: the value changed before we slept */
}

static inline void ng_futex_wake(uint32_t *addr, int n)
{
    syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

/* CPUs this process may run on (its affinity mask, so `docker --cpuset-cpus` counts). */
int ng_cpu_count(void);

/* Probes membarrier(2) and sets ng_plain_unlock; run at load time and in the fork child. */
void ng_park_announce_init(void);

#endif /* NOGIL_INTERNAL_H */
