/* ng_rwmutex: a writer-preferring readers-writer lock (CPython's _PyRWMutex).
 *
 * Word `bits`: bit 0 (NG_WRITE_LOCKED) a writer holds it; bit 1 (NG_HAS_PARKED) threads may be
 * parked; bits 2.. the number of readers holding it. Readers do not enter while the parked bit
 * is set, so a waiting writer is not starved by a stream of readers. Not reentrant.
 * Zero-initialised = unlocked. Fork: ng_rwmutex_at_fork_reinit in the child. Thread exit:
 * a lock held by an exiting thread stays held.
 */
#ifndef NOGIL_RWMUTEX_H
#define NOGIL_RWMUTEX_H

#include <stdbool.h>
#include <stdint.h>
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NG_WRITE_LOCKED ((uintptr_t)1)
#define NG_RWMUTEX_PARKED ((uintptr_t)2)
#define NG_RWMUTEX_READER_SHIFT 2

typedef struct ng_rwmutex {
    uintptr_t bits;
} ng_rwmutex;

#define NG_RWMUTEX_INIT {0}

/* Blocking calls wait detached. All return NG_OK or NG_EINVAL; unlocks may also return
 * NG_ENOTLOCKED (the lock was not held that way; nothing changed), and locks NG_CANCELLED
 * (not taken) if the calling thread's installed ng_cancel token fired. */
int ng_rwmutex_rlock(ng_rwmutex *rw);
int ng_rwmutex_runlock(ng_rwmutex *rw);
int ng_rwmutex_lock(ng_rwmutex *rw);
int ng_rwmutex_unlock(ng_rwmutex *rw);
/* Non-blocking attempts: true if acquired. */
bool ng_rwmutex_tryrlock(ng_rwmutex *rw);
bool ng_rwmutex_trylock(ng_rwmutex *rw);

void ng_rwmutex_at_fork_reinit(ng_rwmutex *rw);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_RWMUTEX_H */
