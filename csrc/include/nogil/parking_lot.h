/* The parking lot: compare-and-sleep on any address, and wake-ups keyed by that address.
 *
 * A thread parks on an address only if the address still holds the value it expects, and that
 * check is atomic with respect to unparks of the same address: both happen under the lock of
 * the address's bucket. Waiters on one address are woken in FIFO order. Locks built on top keep
 * their whole state in a byte or word and only use the lot when somebody must sleep.
 *
 * Wait entries live on the parked threads' stacks; a thread cannot exit while parked, so the
 * lot holds nothing that a thread exit must clean up. After fork() the child must call
 * ng_parking_lot_after_fork() (nogil registers it with pthread_atfork) before any lock is
 * re-initialised: every waiter belonged to a thread that does not exist in the child.
 */
#ifndef NOGIL_PARKING_LOT_H
#define NOGIL_PARKING_LOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sleeps until ng_unpark/ng_unpark_all wakes the caller for `addr`, if and only if the `size`
 * bytes at `addr` equal those at `expected` (size 1, 2, 4 or 8; `addr` aligned to `size`).
 *
 * timeout_ns < 0 waits forever; 0 checks the value but never sleeps (returns NG_TIMEOUT
 * on a match). `park_arg` is handed to the unpark callback of the thread that wakes us.
 * flags: NG_WAIT_DETACH, NG_WAIT_INTERRUPTIBLE.
 *
 * Returns NG_OK (woken by an unpark), NG_AGAIN (value differed), NG_TIMEOUT, NG_INTR,
 * NG_CANCELLED (the calling thread's ng_cancel token fired), or NG_EINVAL. A timeout or
 * cancellation that races with an unpark never loses the wake-up: if an unparker has already
 * dequeued us, we wait for its post and return NG_OK. */
int ng_park(const void *addr, const void *expected, size_t size, int64_t timeout_ns,
            void *park_arg, int flags);

/* Called by ng_unpark under the bucket lock. `park_arg` is the woken thread's, or NULL when
 * no thread was parked on the address. `has_more_waiters` is nonzero if threads may still be
 * parked on the address (it can be a false positive, never a false negative). The callback
 * must be short and must not park or unpark. */
typedef void ng_unpark_fn(void *arg, void *park_arg, int has_more_waiters);

/* Wakes the longest-waiting thread parked on `addr`. `fn` (may be NULL) is called under the
 * bucket lock whether or not a thread was found, so it can update the word at `addr`
 * atomically with respect to new parkers. Returns 1 if a thread was woken, 0 if none was
 * parked, NG_EINVAL for a NULL address. */
int ng_unpark(const void *addr, ng_unpark_fn *fn, void *arg);

/* Like ng_unpark_fn, but told explicitly whether a thread was woken (`woken`): park_arg alone
 * cannot say, because a parker may pass NULL as its park_arg. */
typedef void ng_unpark_ex_fn(void *arg, void *park_arg, int woken, int has_more_waiters);

/* ng_unpark with an ng_unpark_ex_fn callback. Same return values. */
int ng_unpark_ex(const void *addr, ng_unpark_ex_fn *fn, void *arg);

/* Wakes every thread parked on `addr`. Returns how many, or NG_EINVAL. */
int ng_unpark_all(const void *addr);

/* How many threads are parked on `addr` right now (a snapshot; for tests and diagnostics). */
int ng_parking_lot_waiters(const void *addr);

/* Forgets every parked thread. Only for the child of fork(), before anything else runs. */
void ng_parking_lot_after_fork(void);

/* ---- Cancellation ----------------------------------------------------------------------
 * A token that a thread installs for a span of code; while installed, any park of that
 * thread returns NG_CANCELLED as soon as the token fires (also if it fired before the park),
 * and so does every blocking lock or wait call built on the lot: they give up without taking
 * the lock. The token survives fork() in the thread that forked.
 * ng_cancel_fire may be called from any thread, any number of times. Go's LockContext and
 * WaitContext use this. The token must outlive the span in which it is installed. */
typedef struct ng_cancel {
    uint32_t fired;       /* 0, then 1 forever */
    const void *addr;     /* address the owner is parked on, or NULL (written under its bucket) */
    void *waiter;         /* the owner's wait entry while parked, or NULL */
} ng_cancel;

#define NG_CANCEL_INIT {0, NULL, NULL}

void ng_cancel_init(ng_cancel *c);
/* Fires the token; wakes its thread if parked. Returns 1 if it woke a thread, else 0. */
int ng_cancel_fire(ng_cancel *c);
int ng_cancel_fired(const ng_cancel *c);
/* Installs `c` (NULL: none) as the calling thread's token and returns the previous one. */
ng_cancel *ng_cancel_install(ng_cancel *c);

/* ---- Block hooks -----------------------------------------------------------------------
 * Called around the sleep of a park with NG_WAIT_DETACH. `before_block` returns a cookie that
 * is passed to `after_block`. The thread-state layer installs hooks that detach the caller
 * (CPython's _PY_LOCK_DETACH). Default: none. The struct must stay valid while installed. */
typedef struct ng_block_hooks {
    void *(*before_block)(void);
    void (*after_block)(void *cookie);
} ng_block_hooks;

/* Installs `hooks` (NULL: none); returns the previous hooks. */
const ng_block_hooks *ng_set_block_hooks(const ng_block_hooks *hooks);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_PARKING_LOT_H */
