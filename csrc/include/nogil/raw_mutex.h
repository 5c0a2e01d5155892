/* A word-sized mutex that sleeps on its own futex and never touches the parking lot: it is the
 * lock that protects the parking lot's buckets.
 *
 * States of `v`: 0 unlocked; 1 locked, nobody asleep; 2 locked, a thread may be asleep on the
 * futex (the unlocker must FUTEX_WAKE). Not fair, no timeouts, never detaches.
 * Zero-initialised = unlocked.
 */
#ifndef NOGIL_RAW_MUTEX_H
#define NOGIL_RAW_MUTEX_H

#include <stdint.h>
#include "atomic.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ng_raw_mutex {
    uint32_t v;
} ng_raw_mutex;

#define NG_RAW_MUTEX_INIT {0}

void ng_raw_mutex_lock_slow(ng_raw_mutex *m);
void ng_raw_mutex_unlock_slow(ng_raw_mutex *m);

static inline void ng_raw_mutex_lock(ng_raw_mutex *m)
{
    uint32_t expected = 0;
    /* Acquire: the critical section must not float above the lock. */
    if (!ng_atomic_cas(&m->v, &expected, 1, NG_ACQUIRE, NG_RELAXED))
        ng_raw_mutex_lock_slow(m);
}

static inline int ng_raw_mutex_trylock(ng_raw_mutex *m)
{
    uint32_t expected = 0;
    return ng_atomic_cas(&m->v, &expected, 1, NG_ACQUIRE, NG_RELAXED);
}

static inline void ng_raw_mutex_unlock(ng_raw_mutex *m)
{
    uint32_t expected = 1;
    /* Release: the critical section's writes are visible to the next owner. */
    if (!ng_atomic_cas(&m->v, &expected, 0, NG_RELEASE, NG_RELAXED))
        ng_raw_mutex_unlock_slow(m);
}

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_RAW_MUTEX_H */
