/* ng_recursive_mutex: a mutex the owning thread may lock again (CPython's _PyRecursiveMutex).
 *
 * `thread` is the owner's ng_thread_id() (0: none), `level` the number of extra acquisitions.
 * Only the owner may unlock. Zero-initialised = unlocked. Fork: at-fork reinit in the child
 * (the surviving thread keeps its id, so a lock it held stays its own). Thread exit: a lock
 * held by an exiting thread stays held; ids are never reused, so no other thread inherits it.
 */
#ifndef NOGIL_RECURSIVE_MUTEX_H
#define NOGIL_RECURSIVE_MUTEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mutex.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ng_recursive_mutex {
    ng_mutex mutex;
    uint64_t thread;
    size_t level;
} ng_recursive_mutex;

#define NG_RECURSIVE_MUTEX_INIT {NG_MUTEX_INIT, 0, 0}

/* NG_OK or NG_EINVAL; blocks detached. NG_CANCELLED (not taken) if the calling thread's
 * installed ng_cancel token fired. */
int ng_recursive_mutex_lock(ng_recursive_mutex *m);
/* Timed variant: NG_OK, NG_TIMEOUT, NG_INTR, NG_CANCELLED or NG_EINVAL. */
int ng_recursive_mutex_lock_timed(ng_recursive_mutex *m, int64_t timeout_ns, int flags);
/* NG_OK, NG_ENOTOWNER (caller does not hold it: nothing changed) or NG_EINVAL. */
int ng_recursive_mutex_unlock(ng_recursive_mutex *m);
bool ng_recursive_mutex_is_owned(const ng_recursive_mutex *m);
void ng_recursive_mutex_at_fork_reinit(ng_recursive_mutex *m);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_RECURSIVE_MUTEX_H */
