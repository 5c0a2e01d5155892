/* Park announcements: what lets ng_mutex_unlock be a plain store instead of an atomic
 * read-modify-write.
 *
 * An unlock must not miss a thread that is about to park on the lock. With a compare-and-swap
 * unlock that is automatic, but a CAS costs as much as the whole rest of an uncontended
 * lock/unlock pair. Instead, the unlock fast path stores "unlocked" and then reads a per-bucket
 * count of threads that are parking; a thread about to park first increments that count and
 * then runs an asymmetric fence (membarrier(2) MEMBARRIER_CMD_PRIVATE_EXPEDITED), which makes
 * every running thread of the process execute a full memory barrier. Like Dekker's algorithm
 * with the fence moved entirely to the rare side: either the unlocker sees the count and wakes
 * the parker, or the parker sees the unlocked byte and does not sleep. The parker pays a few
 * microseconds right before it would sleep anyway; the unlocker pays nothing.
 *
 * If the kernel (or a seccomp policy) refuses membarrier, ng_plain_unlock is 0 and unlocks use
 * a CAS; either way a CAS unlock (Go's, or the slow path) is always correct.
 * Fork: the child re-registers for membarrier and falls back to CAS unlocks if it cannot.
 * Thread exit: a thread counts itself only while inside a lock's slow path.
 */
#ifndef NOGIL_PARK_ANNOUNCE_H
#define NOGIL_PARK_ANNOUNCE_H

#include <stdint.h>
#include "atomic.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NG_LOT_BUCKET_BITS 10
#define NG_LOT_BUCKETS (1u << NG_LOT_BUCKET_BITS)

/* The parking-lot bucket of an address (Fibonacci hashing spreads addresses that differ only
 * in their high or low bits). Shared by the lot and the inline unlock fast path. */
static inline unsigned ng_lot_bucket_index(const void *addr)
{
    return (unsigned)(((uint64_t)(uintptr_t)addr * UINT64_C(0x9E3779B97F4A7C15)) >>
                      (64 - NG_LOT_BUCKET_BITS));
}

/* One cache line per bucket, so that parkers in one bucket do not slow unlocks in another. */
typedef struct ng_park_announce_slot {
    uint32_t parkers;
    uint8_t pad[60];
} __attribute__((aligned(64))) ng_park_announce_slot;

/* Private to nogil's inline functions; do not touch. */
extern ng_park_announce_slot ng_park_announce_slots[NG_LOT_BUCKETS];
extern int ng_plain_unlock;

/* How many threads are parking on addresses of addr's bucket. Relaxed: the ordering comes
 * from the parkers' asymmetric fence, not from this load. */
static inline uint32_t ng_park_announced(const void *addr)
{
    return ng_atomic_load(&ng_park_announce_slots[ng_lot_bucket_index(addr)].parkers,
                          NG_RELAXED);
}

/* Counts the caller as parking on addr's bucket, then fences (see above). */
void ng_park_announce(const void *addr);
/* Undoes ng_park_announce. */
void ng_park_withdraw(const void *addr);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_PARK_ANNOUNCE_H */
