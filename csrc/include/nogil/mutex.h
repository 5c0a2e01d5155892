/* ng_mutex: a one-byte mutex (CPython's PyMutex).
 *
 * Bits of `bits`: NG_LOCKED (bit 0) the mutex is held; NG_HAS_PARKED (bit 1) a thread may be
 * parked on the byte, so unlock must go through the parking lot. The four states are 00
 * unlocked, 01 locked, 10 unlocked with waiters (a woken waiter is about to retry), 11 locked
 * with waiters. Zero-initialised = unlocked.
 *
 * Locking spins (yielding the CPU) for up to 300 us on multi-core machines, then parks. A thread
 * whose yield lost its CPU to another task for long (> 100 us) spends its spins of the next
 * 10 ms asleep instead, so that it is not away for a whole time slice of that task while the
 * owner runs. A waiter that has waited longer than the hand-off threshold (1 ms) is handed the
 * lock directly by the unlocker: the byte never shows "unlocked" in between, so a barging
 * thread cannot take it. Otherwise the woken waiter competes with other lockers (barging keeps
 * throughput high).
 *
 * Fork: a child must call ng_mutex_at_fork_reinit on every mutex it will use that a dead thread
 * might hold. Thread exit: a mutex held by a thread that exits stays locked.
 */
#ifndef NOGIL_MUTEX_H
#define NOGIL_MUTEX_H

#include <stdbool.h>
#include <stdint.h>
#include "atomic.h"
#include "park_announce.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    NG_UNLOCKED = 0,
    NG_LOCKED = 1,
    NG_HAS_PARKED = 2,
};

/* Default hand-off threshold: a waiter that has waited this long gets the lock directly. */
#define NG_MUTEX_HANDOFF_NS INT64_C(1000000)

typedef struct ng_mutex {
    uint8_t bits;
} ng_mutex;

#define NG_MUTEX_INIT {0}

/* Slow paths (lock.c). Timed lock: timeout < 0 forever, 0 try once, > 0 relative ns.
 * Returns NG_OK, NG_TIMEOUT, NG_INTR, NG_CANCELLED or NG_EINVAL. */
int ng_mutex_lock_timed(ng_mutex *m, int64_t timeout_ns, int flags);
int ng_mutex_unlock_slow(ng_mutex *m);
int ng_mutex_unlock_wake(ng_mutex *m);

/* Locks, blocking (detached) as long as needed. NG_OK or NG_EINVAL; NG_CANCELLED (lock not
 * taken) only if the calling thread installed an ng_cancel token and it fired. */
static inline int ng_mutex_lock(ng_mutex *m)
{
    uint8_t expected = NG_UNLOCKED;
    /* Acquire pairs with the release of the previous unlock. Go's fast path uses a seq-cst
     * CAS on the containing word; a lock needs nothing stronger than acquire/release. */
    if (m != NULL && ng_atomic_cas(&m->bits, &expected, NG_LOCKED, NG_ACQUIRE, NG_RELAXED))
        return NG_OK;
    return ng_mutex_lock_timed(m, -1, NG_WAIT_DETACH);
}

/* Takes the mutex if it is free (also when waiters are parked: try-lock may barge).
 * Returns true on success; false if it is held or m is NULL. */
static inline bool ng_mutex_trylock(ng_mutex *m)
{
    if (m == NULL)
        return false;
    uint8_t v = ng_atomic_load(&m->bits, NG_RELAXED);
    while ((v & NG_LOCKED) == 0) {
        if (ng_atomic_cas(&m->bits, &v, (uint8_t)(v | NG_LOCKED), NG_ACQUIRE, NG_RELAXED))
            return true;
    }
    return false;
}

/* Unlocks. NG_OK, NG_ENOTLOCKED (it was not locked: nothing changed) or NG_EINVAL.
 * Without parked waiters this is a plain store and a load (nogil/park_announce.h). */
static inline int ng_mutex_unlock(ng_mutex *m)
{
    if (m != NULL && ng_atomic_load(&ng_plain_unlock, NG_RELAXED) &&
        ng_atomic_load(&m->bits, NG_RELAXED) == NG_LOCKED) {
        /* Release: the critical section happens-before the next owner's acquiring CAS.
         * While the byte is LOCKED only a would-be parker changes it (adding HAS_PARKED), and
         * it announced itself first, which the load below sees unless the parker sees our
         * store; the parker's asymmetric fence orders the store before that load, so here
         * a compiler barrier is enough. */
        ng_atomic_store(&m->bits, NG_UNLOCKED, NG_RELEASE);
        __atomic_signal_fence(NG_SEQ_CST);
        if (ng_park_announced(&m->bits) == 0)
            return NG_OK;
        return ng_mutex_unlock_wake(m);
    }
    uint8_t expected = NG_LOCKED;
    /* Release: the critical section happens-before the next owner's acquire. */
    if (m != NULL && ng_atomic_cas(&m->bits, &expected, NG_UNLOCKED, NG_RELEASE, NG_RELAXED))
        return NG_OK;
    return ng_mutex_unlock_slow(m);
}

static inline bool ng_mutex_is_locked(const ng_mutex *m)
{
    return (ng_atomic_load(&m->bits, NG_ACQUIRE) & NG_LOCKED) != 0;
}

/* Resets the mutex to unlocked without waking anybody. Only for the child of fork() (after
 * ng_parking_lot_after_fork), or for memory nobody else can reach. */
void ng_mutex_at_fork_reinit(ng_mutex *m);

/* Sets the process-wide hand-off threshold in ns and returns the previous one. 0 hands off on
 * every contended unlock; a negative value never hands off. For tests and tuning. */
int64_t ng_mutex_set_handoff_ns(int64_t ns);

/* Sets how many times at most a contended lock spins before parking, within its 300 us spin
 * time, and returns the previous value. Default: no count limit (INT_MAX) on multi-core
 * machines, 0 (park at once) on one CPU. */
int ng_mutex_set_spin_limit(int spins);

/* Sets how long (ns) a wait in the spin may take before the calling thread counts its CPU as
 * shared with another task and sleeps instead of yielding for 10 ms; returns the previous
 * value (default 100 us; negative is taken as 0, i.e. every wait is long). For tests and
 * tuning. */
int64_t ng_mutex_set_long_yield_ns(int64_t ns);

/* Until when (ng_monotonic_ns time) the calling thread sleeps instead of yielding in its
 * spin; 0 or a past time if it yields. For tests and diagnostics. */
int64_t ng_mutex_sleep_spin_until(void);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_MUTEX_H */
