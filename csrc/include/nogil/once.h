/* ng_once: run an initialiser exactly once, successfully (CPython's _PyOnceFlag).
 *
 * Byte `v`: 0 not started; NG_LOCKED (1) an initialiser is running; NG_LOCKED|NG_HAS_PARKED
 * (3) running with waiters; NG_ONCE_DONE (4) done. An initialiser that fails leaves the flag
 * at 0 and the next caller runs it again. Callers that arrive while it runs wait (detached).
 * The initialiser must not use the same flag (it would wait for itself).
 *
 * Fork: ng_once_after_fork resets a flag whose initialiser was running in a thread that does
 * not exist in the child, so the child can run it again. Thread exit while running the
 * initialiser is a bug of the caller (waiters would sleep forever), as with pthread_once.
 */
#ifndef NOGIL_ONCE_H
#define NOGIL_ONCE_H

#include <stdbool.h>
#include <stdint.h>
#include "atomic.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NG_ONCE_DONE 4

typedef struct ng_once {
    uint8_t v;
} ng_once;

#define NG_ONCE_INIT {0}

/* Returns 0 on success, nonzero on failure; a failure makes the next caller try again. */
typedef int ng_once_fn(void *arg);

/* Runs fn(arg) unless an earlier call succeeded. Returns 0 when the flag is done (now or
 * before), fn's nonzero result when this call ran fn and it failed, NG_CANCELLED, or
 * NG_EINVAL (NULL flag or fn). */
int ng_once_call(ng_once *o, ng_once_fn *fn, void *arg);

/* The two halves of ng_once_call, for callers that run the initialiser themselves (Go).
 * ng_once_begin returns 0 if the flag is done, 1 if the caller now owns the initialisation and
 * must call ng_once_end, or NG_CANCELLED / NG_EINVAL. It waits while another thread runs it. */
int ng_once_begin(ng_once *o);
/* Publishes the outcome: success != 0 marks the flag done, 0 lets the next caller retry.
 * NG_OK, NG_ENOTLOCKED (no initialisation was running) or NG_EINVAL. */
int ng_once_end(ng_once *o, int success);

static inline bool ng_once_is_done(const ng_once *o)
{
    /* Acquire: the initialiser's writes happen-before whatever the caller does next. */
    return ng_atomic_load(&o->v, NG_ACQUIRE) == NG_ONCE_DONE;
}

/* In the child of fork(): a flag left "running" by a thread that no longer exists goes back
 * to "not started". Returns 1 if it was reset. */
int ng_once_after_fork(ng_once *o);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_ONCE_H */
