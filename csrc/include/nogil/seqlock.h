/* ng_seqlock: a sequence lock for data that is read far more often than written
 * (CPython's _PySeqLock).
 *
 * `sequence` is even when no write is in progress and odd during one. Readers never block
 * writers: they read the sequence, read the data with (relaxed) atomic loads, and retry if the
 * sequence moved. Writers exclude each other by making the sequence odd. A writer must not
 * block (or park) while it holds the lock, because readers spin-yield until it is done.
 * Fork: ng_seqlock_after_fork repairs a lock left odd by a writer that died mid-update.
 * Thread exit in the middle of a write is a bug of the caller (readers would spin forever).
 */
#ifndef NOGIL_SEQLOCK_H
#define NOGIL_SEQLOCK_H

#include <sched.h>
#include <stdint.h>
#include "atomic.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ng_seqlock {
    uint32_t sequence;
} ng_seqlock;

#define NG_SEQLOCK_INIT {0}

/* Becomes the only writer (spin-yields while another writer is active). */
static inline void ng_seqlock_write_begin(ng_seqlock *s) __attribute__((nonnull));
static inline void ng_seqlock_write_begin(ng_seqlock *s)
{
    uint32_t seq = ng_atomic_load(&s->sequence, NG_RELAXED);
    for (;;) {
        if (seq & 1) {
            sched_yield();
            seq = ng_atomic_load(&s->sequence, NG_RELAXED);
            continue;
        }
        /* Acquire: we see the previous writer's data before we overwrite it. */
        if (ng_atomic_cas(&s->sequence, &seq, seq + 1, NG_ACQUIRE, NG_RELAXED))
            break;
    }
    /* The odd sequence must be visible before any of the data stores that follow: a release
     * fence orders the store above before every later store. */
    ng_atomic_fence(NG_RELEASE);
}

/* Publishes the write (sequence becomes even and different). */
static inline void ng_seqlock_write_end(ng_seqlock *s) __attribute__((nonnull));
static inline void ng_seqlock_write_end(ng_seqlock *s)
{
    uint32_t seq = ng_atomic_load(&s->sequence, NG_RELAXED);
    /* Release: the data stores happen-before a reader that sees the new even value. */
    ng_atomic_store(&s->sequence, seq + 1, NG_RELEASE);
}

/* Ends a write that changed nothing: the sequence returns to its previous value so readers
 * that overlapped do not need to retry. */
static inline void ng_seqlock_write_abandon(ng_seqlock *s) __attribute__((nonnull));
static inline void ng_seqlock_write_abandon(ng_seqlock *s)
{
    uint32_t seq = ng_atomic_load(&s->sequence, NG_RELAXED);
    ng_atomic_store(&s->sequence, seq - 1, NG_RELEASE);
}

/* Starts a read: returns the (even) sequence to hand to ng_seqlock_read_retry. */
static inline uint32_t ng_seqlock_read_begin(const ng_seqlock *s) __attribute__((nonnull));
static inline uint32_t ng_seqlock_read_begin(const ng_seqlock *s)
{
    /* Acquire: the data loads that follow cannot be satisfied before this load. */
    uint32_t seq = ng_atomic_load(&s->sequence, NG_ACQUIRE);
    while (seq & 1) {
        sched_yield();
        seq = ng_atomic_load(&s->sequence, NG_ACQUIRE);
    }
    return seq;
}

/* True if the data read since ng_seqlock_read_begin may be torn and the read must be redone. */
static inline int ng_seqlock_read_retry(const ng_seqlock *s, uint32_t seq) __attribute__((nonnull));
static inline int ng_seqlock_read_retry(const ng_seqlock *s, uint32_t seq)
{
    /* The acquire fence keeps the data loads above from moving below the sequence load
     * (CPython gh-121368: without it a torn read can be accepted on weak memory). */
    ng_atomic_fence(NG_ACQUIRE);
    return ng_atomic_load(&s->sequence, NG_RELAXED) != seq;
}

/* In the child of fork(): if a writer died mid-update, resets the lock and returns 1 (the
 * caller must reset the protected data); otherwise returns 0. */
static inline int ng_seqlock_after_fork(ng_seqlock *s) __attribute__((nonnull));
static inline int ng_seqlock_after_fork(ng_seqlock *s)
{
    if (ng_atomic_load(&s->sequence, NG_RELAXED) & 1) {
        ng_atomic_store(&s->sequence, 0, NG_RELAXED);
        return 1;
    }
    return 0;
}

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_SEQLOCK_H */
