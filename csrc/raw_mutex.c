/* Slow paths of the raw mutex (states in nogil/raw_mutex.h). */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

#define CONTENDED 2
/* Bucket critical sections are a few dozen instructions: a short spin usually wins. */
#define RAW_SPINS 100

void ng_raw_mutex_lock_slow(ng_raw_mutex *m)
{
    if (ng_cpu_count() > 1) {
        for (int i = 0; i < RAW_SPINS; i++) {
            ng_cpu_relax();
            uint32_t v = ng_atomic_load(&m->v, NG_RELAXED);
            if (v == 0 && ng_atomic_cas(&m->v, &v, 1, NG_ACQUIRE, NG_RELAXED))
                return;
        }
    }
    /* Taking the lock as CONTENDED (not 1) is conservative: we cannot know whether other
     * sleepers remain, so our unlock will wake one. Acquire as for the fast path. */
    while (ng_atomic_exchange(&m->v, CONTENDED, NG_ACQUIRE) != 0)
        ng_futex_wait_until(&m->v, CONTENDED, NG_DEADLINE_NEVER);
}

void ng_raw_mutex_unlock_slow(ng_raw_mutex *m)
{
    /* Release: the critical section is visible to the next owner. */
    uint32_t old = ng_atomic_exchange(&m->v, 0, NG_RELEASE);
    if (old == 0) {
        /* Internal lock only: unlocking it twice is a bug in nogil itself. */
        fputs("nogil: internal raw mutex unlocked while not locked\n", stderr);
        abort();
    }
    ng_futex_wake(&m->v, 1);
}
