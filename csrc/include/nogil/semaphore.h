/* A futex-backed semaphore for one waiting thread and any number of posters.
 *
 * The parking lot gives each parked thread one of these (on its stack); the raw mutex does not
 * use it. Value: n >= 0 is the number of unconsumed posts; -1 means the waiter is asleep on
 * the futex (and no post is pending), so a post knows when the FUTEX_WAKE syscall is needed.
 * A post may come before the wait; it is remembered. Zero-initialised = no posts.
 */
#ifndef NOGIL_SEMAPHORE_H
#define NOGIL_SEMAPHORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ng_semaphore {
    int32_t value;
} ng_semaphore;

#define NG_SEMAPHORE_INIT {0}

/* Adds one post and wakes the waiter if it sleeps. NG_OK or NG_EINVAL. */
int ng_semaphore_post(ng_semaphore *s);

/* Consumes one post, sleeping until one arrives or the absolute CLOCK_MONOTONIC deadline
 * passes (NG_DEADLINE_NEVER: no deadline). Returns NG_OK, NG_TIMEOUT, NG_INTR (only with
 * NG_WAIT_INTERRUPTIBLE; otherwise signals are absorbed), or NG_EINVAL.
 * Only one thread may wait on a semaphore at a time. */
int ng_semaphore_wait_until(ng_semaphore *s, int64_t deadline_ns, int flags);

/* Same with a relative timeout (negative: forever; 0: do not sleep). */
int ng_semaphore_wait(ng_semaphore *s, int64_t timeout_ns, int flags);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_SEMAPHORE_H */
