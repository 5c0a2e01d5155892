/* QSBR: quiescent-state-based reclamation (CPython's Python/qsbr.c, FreeBSD GUS lineage).
 *
 * A writer that unlinks memory lock-free readers may still hold computes a *goal* (a write
 * sequence) and frees the memory once every attached thread has reported a quiescent state at
 * or past that goal. Sequences are 64-bit, odd, step NG_QSBR_INCR, compared wrap-safely
 * (NG_QSBR_LT/LEQ); a slot's `seq` is NG_QSBR_OFFLINE (0) while its thread is detached.
 *
 * Beyond CPython: slots live in segments that never move (segment k holds
 * NG_QSBR_FIRST_SEGMENT << k slots), so growing needs neither stop-the-world nor pointer
 * rewriting, and a slot pointer stays valid from reserve to unregister (CPython's R2 and R10
 * cannot happen), and for as long as it is pinned (ng_qsbr_pin: a given-back slot that is not
 * reused, so a reader may compare its seq without checking its owner). A failed poll remembers
 * the slot that held it back, so polling a goal that a stalled thread blocks costs one load
 * instead of a scan of every slot. Slots in use stay packed at the bottom (the lowest free slot
 * is handed out first) and the scan bound, high_water, drops when the top slots are given back:
 * after a burst of threads that exited, a scan walks about as many slots as are in use, not as
 * many as the burst had (liburcu scans only its live readers).
 *
 * Hot operations (attach, detach, quiescent state, goal check, advance) are inline here; Go
 * performs the same operations with sync/atomic on the same words (qsbr.go).
 *
 * A thread that must wait for a goal can sleep (ng_qsbr_wait) instead of polling: it counts
 * itself in `waiters`, and a quiescent report or detach that finds waiters wakes them, as
 * liburcu's readers wake synchronize_rcu. The report stays two loads and a compare while the
 * thread has nothing new to report. Code that writes a slot's seq itself (the Go mirror) must
 * do the same: after its store, a full fence, then ng_qsbr_wake_waiters if `waiters` is not
 * zero. A waiter also wakes every 10 ms by itself, so a report that forgets only delays it.
 *
 * Fork: ng_qsbr_after_fork (called by the interpreter's child handler) frees every slot but the
 * survivor's and the pinned ones. Thread exit: the thread-state layer detaches and unregisters the slot.
 */
#ifndef NOGIL_QSBR_H
#define NOGIL_QSBR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "atomic.h"
#include "mutex.h"
#include "raw_mutex.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NG_QSBR_OFFLINE UINT64_C(0)
#define NG_QSBR_INITIAL UINT64_C(1)
#define NG_QSBR_INCR UINT64_C(2)

/* Signed-difference comparisons: correct across wrap-around of the 64-bit sequence. */
#define NG_QSBR_LT(a, b) ((int64_t)((a) - (b)) < 0)
#define NG_QSBR_LEQ(a, b) ((int64_t)((a) - (b)) <= 0)

/* Slots are padded to this size so each thread's `seq` has its own cache line (128 on arm64,
 * whose big cores use 128-byte lines). */
#if defined(__aarch64__)
#define NG_QSBR_SLOT_ALIGN 128
#else
#define NG_QSBR_SLOT_ALIGN 64
#endif

#define NG_QSBR_FIRST_SEGMENT 8 /* slots in segment 0; segment k has 8 << k */
#define NG_QSBR_MAX_SEGMENTS 24 /* about 134 million slots */

/* Default thresholds of memory-aware processing (CPython 3.14's QSBR_DEFERRED_LIMIT,
 * QSBR_FREE_MEM_LIMIT, QSBR_PAGE_MEM_LIMIT). */
#define NG_QSBR_DEFAULT_ITEM_LIMIT 127
#define NG_QSBR_DEFAULT_MEM_LIMIT (1024 * 1024)
#define NG_QSBR_DEFAULT_PAGE_MEM_LIMIT (4096 * 20)

struct ng_qsbr_shared;
struct ng_tstate;

/* One thread's slot. `seq` is written only by the owning thread and read by scanners; the
 * deferred counters are owner-only. Fields other threads write (stall bookkeeping) are in
 * their own words. */
typedef struct ng_qsbr_slot {
    uint64_t seq;                      /* last observed wr_seq, or NG_QSBR_OFFLINE */
    struct ng_qsbr_shared *shared;
    struct ng_tstate *tstate;          /* owner; NULL when free (under shared->mutex) */
    uint32_t index;                    /* position in the slot space, fixed */
    uint8_t allocated;                 /* reserved, registered or retained (under shared->mutex) */
    uint8_t should_process;            /* set when the thresholds were crossed; owner clears */
    uint8_t retained;                  /* given back while pinned: offline, no owner (mutex) */
    uint8_t reserved0;
    uint32_t deferred_count;           /* items since the last forced advance (owner only) */
    uint32_t pins;                     /* ng_qsbr_pin holders (under shared->mutex) */
    uint64_t deferred_memory;          /* bytes since the last forced advance (owner only) */
    uint64_t deferred_page_memory;     /* page bytes since the last forced advance (owner only) */
    /* Stall detector bookkeeping, written by scanners with relaxed atomics: the seq this slot
     * had when a scan first found it behind, and when (ng_now_ns). */
    uint64_t stall_seq;
    int64_t stall_since_ns;
} __attribute__((aligned(NG_QSBR_SLOT_ALIGN))) ng_qsbr_slot;

/* A goal that stays unmet longer than the stall threshold is reported through this callback,
 * once per stall (a slot behind at one seq). It runs on the thread whose poll noticed the
 * stall, without locks held: an attached thread in the middle of its processing (so it must
 * return quickly, and may neither block nor detach), or a thread waiting in ng_qsbr_wait,
 * detached (the delayed-free back-pressure wait). It may not call back into QSBR nor use its
 * thread's state. The thread reported is one online slot's owner, never a waiter's (its slot
 * is offline) nor the polling thread's own (its next quiescent report ends that wait). */
typedef struct ng_qsbr_stall {
    uint64_t goal;            /* the unmet goal */
    uint64_t thread_id;       /* ng_thread_id() of the thread holding it back (0: unknown) */
    uint64_t tstate_id;       /* its thread-state id */
    bool attached;            /* its slot was online when seen */
    int64_t behind_ns;        /* time since it was first seen at its current (old) seq */
    uint64_t pending_bytes;   /* bytes waiting in its delayed-free queue */
    uint32_t slot_index;
} ng_qsbr_stall;

typedef void ng_qsbr_stall_fn(void *arg, const ng_qsbr_stall *stall);

typedef struct ng_qsbr_shared {
    uint64_t wr_seq;                   /* odd; advanced by NG_QSBR_INCR (seq-cst RMW) */
    char pad0[NG_QSBR_SLOT_ALIGN - sizeof(uint64_t)];
    uint64_t rd_seq;                   /* min seq of online slots seen by the last scan */
    ng_qsbr_slot *laggard;             /* slot that failed the last poll (a hint) */
    uint32_t waiters;                  /* threads sleeping in ng_qsbr_wait */
    uint32_t wake_seq;                 /* their parking word, bumped by every wake */
    char pad1[NG_QSBR_SLOT_ALIGN - 2 * sizeof(uint64_t) - sizeof(void *)];
    ng_qsbr_slot *segments[NG_QSBR_MAX_SEGMENTS]; /* published with release, never moved */
    uint32_t nsegments;                /* acquire-read by scanners */
    uint32_t high_water;               /* 1 + highest slot in use; scans stop here */
    ng_mutex mutex;                    /* free_bits, allocation, segment growth */
    uint64_t *free_bits;               /* bit i: slot i < high_water is free (under the mutex) */
    uint32_t free_words;               /* words of free_bits: enough for the capacity */
    uint32_t registered;               /* slots reserved or registered (stats) */
    uint32_t retained;                 /* slots given back while pinned (stats) */
    /* Tunables (relaxed loads; set with ng_qsbr_set_limits). */
    uint32_t item_limit;
    uint64_t mem_limit;
    uint64_t page_mem_limit;
    int64_t stall_ns;                  /* 0: detector off */
    ng_qsbr_stall_fn *stall_fn;
    void *stall_arg;
    /* Statistics (relaxed). */
    uint64_t scans;
    uint64_t advances;
    uint64_t stalls_reported;
    ng_qsbr_stall last_stall;          /* under stall_lock */
    /* Not the mutex: statistics must be readable by a thread that has stopped the world, and
     * the mutex may have been handed to a thread that is now suspended (spec R9). The raw
     * mutex is held only for the copy and for recording a stall's first sighting, never
     * across anything that can suspend. */
    ng_raw_mutex stall_lock;
} ng_qsbr_shared;

/* Initialises `shared` (wr_seq = rd_seq = initial, which is NG_QSBR_INITIAL unless the
 * nogil_torture build starts near 2^64). NG_OK or NG_EINVAL. */
int ng_qsbr_init(ng_qsbr_shared *shared);
/* Frees the segments. Every slot must have been unregistered and unpinned (else NG_EBUSY,
 * nothing done). */
int ng_qsbr_fini(ng_qsbr_shared *shared);

/* Reserves the lowest free slot (growing by a new segment when none is free). The slot is
 * allocated but has no owner until ng_qsbr_register. NG_OK, NG_ENOMEM (nothing leaked),
 * NG_EINVAL. */
int ng_qsbr_reserve(ng_qsbr_shared *shared, ng_qsbr_slot **slot_out);
/* Gives a reserved, never registered slot back (creation failed later: R18). */
int ng_qsbr_unreserve(ng_qsbr_slot *slot);
/* Links a reserved slot to its owner. */
int ng_qsbr_register(ng_qsbr_slot *slot, struct ng_tstate *tstate);
/* Frees the slot, or retains it while it is pinned (see ng_qsbr_pin). It must be detached
 * (seq 0): NG_ESTATE otherwise. */
int ng_qsbr_unregister(ng_qsbr_slot *slot);

/* Pins a reserved or registered slot for a reader that compares its seq with wr_seq without
 * knowing whether the owner is still there (the Go wrapper's quiescent reports: equal means
 * "live, attached and up to date" only if nobody else can own the slot). While pinned, a slot
 * its owner gives back (unregister, unreserve) is *retained*: it stays offline (seq 0, which
 * no write sequence equals: they are odd), is skipped by scans like any offline slot and is
 * not handed out again; the last ng_qsbr_unpin frees it. The pin does not keep the shared
 * state alive: the pinner must (the thread-state layer pins the interpreter's memory).
 * Retained slots count in the statistics' `retained`, not in `registered`. NG_OK, NG_EINVAL,
 * NG_ESTATE (free or retained already). */
int ng_qsbr_pin(ng_qsbr_slot *slot);
/* Drops a pin; the last one frees a retained slot. NG_OK, NG_EINVAL, NG_ESTATE (not pinned). */
int ng_qsbr_unpin(ng_qsbr_slot *slot);

/* Tunables: item count, bytes of delayed frees, bytes of deferred pages; 0 keeps the current
 * value. */
void ng_qsbr_set_limits(ng_qsbr_shared *shared, uint32_t items, uint64_t mem_bytes,
                        uint64_t page_mem_bytes);
/* Stall detector: report a goal unmet for longer than `threshold_ns` (0: off). */
void ng_qsbr_set_stall_handler(ng_qsbr_shared *shared, int64_t threshold_ns,
                               ng_qsbr_stall_fn *fn, void *arg);

/* ---- Inline hot paths ----------------------------------------------------------------- */

/* Acquire: a thread adopting this sequence also sees the unlinks that preceded the advance
 * that produced it. */
static inline uint64_t ng_qsbr_shared_current(const ng_qsbr_shared *shared)
{
    return ng_atomic_load(&shared->wr_seq, NG_ACQUIRE);
}

/* The goal for memory retired now, without advancing: someone must advance later. The caller
 * must order its unlink before this load with a seq-cst fence (an acquire load does not order
 * an earlier store); ng_qsbr_goal_for_free and _for_page do. */
static inline uint64_t ng_qsbr_shared_next(const ng_qsbr_shared *shared)
{
    return ng_qsbr_shared_current(shared) + NG_QSBR_INCR;
}

/* Advances the write sequence and returns the new value: the goal for memory unlinked before
 * the call. Seq-cst: the goal must be ordered after the unlink. */
static inline uint64_t ng_qsbr_advance(ng_qsbr_shared *shared)
{
    ng_atomic_fetch_add(&shared->advances, 1, NG_RELAXED);
    return ng_atomic_fetch_add(&shared->wr_seq, NG_QSBR_INCR, NG_SEQ_CST) + NG_QSBR_INCR;
}

/* Wakes the threads sleeping in ng_qsbr_wait (out of line: reports call it only when some
 * thread waits). */
void ng_qsbr_wake_waiters(ng_qsbr_shared *shared);

/* Out-of-line part of ng_qsbr_quiescent_state: publishes `current` (read relaxed from
 * wr_seq) as the slot's seq and wakes waiters. */
void ng_qsbr_report(ng_qsbr_slot *slot, uint64_t current);

/* Reports that the owning thread holds no pointers into shared structures. Nothing to do when
 * the slot already holds the current sequence: the report that stored it ordered every later
 * read after the unlinks of all goals up to it (liburcu skips the same way). Relaxed loads:
 * a skipped report adopts nothing, and ng_qsbr_report's acquire fence turns the load into an
 * acquire when the value is adopted (relaxed also lets a loop keep slot->shared in a
 * register). */
static inline void ng_qsbr_quiescent_state(ng_qsbr_slot *slot)
{
    uint64_t current = ng_atomic_load(&slot->shared->wr_seq, NG_RELAXED);
    if (__builtin_expect(ng_atomic_load(&slot->seq, NG_RELAXED) != current, 0))
        ng_qsbr_report(slot, current); /* only the owner writes its seq */
}

/* Comes online. The seq-cst fence after the store pairs with the scan's seq-cst fence
 * (Dekker), so either the scanner sees this seq or this thread's later loads see the unlink.
 * A seq-cst store alone is not enough: later relaxed loads may pass it (arm64: stlr, ldr). */
static inline void ng_qsbr_attach(ng_qsbr_slot *slot)
{
    ng_atomic_store(&slot->seq, ng_qsbr_shared_current(slot->shared), NG_RELAXED);
    ng_atomic_fence(NG_SEQ_CST);
}

/* Goes offline. Release: reads made while online happen-before the reclaimer's free. Going
 * offline may end a grace period, so it wakes waiters as a report does (same fence). */
static inline void ng_qsbr_detach(ng_qsbr_slot *slot)
{
    ng_atomic_store(&slot->seq, NG_QSBR_OFFLINE, NG_RELEASE);
    ng_atomic_fence(NG_SEQ_CST);
    if (ng_atomic_load(&slot->shared->waiters, NG_RELAXED) != 0)
        ng_qsbr_wake_waiters(slot->shared);
}

/* Whether `goal` is known reached, without scanning. Seq-cst load of rd_seq (CPython's). */
static inline bool ng_qsbr_goal_reached(const ng_qsbr_slot *slot, uint64_t goal)
{
    return NG_QSBR_LEQ(goal, ng_atomic_load(&slot->shared->rd_seq, NG_SEQ_CST));
}

/* Scans the online slots and publishes the new rd_seq; returns it. */
uint64_t ng_qsbr_scan(ng_qsbr_shared *shared);

/* Out-of-line part of ng_qsbr_poll: laggard check, scan, stall detection. */
bool ng_qsbr_poll_slow(ng_qsbr_slot *slot, uint64_t goal);

/* Whether `goal` is reached, scanning if needed (cheaply rejected while the last laggard is
 * still behind). The caller must be attached (its own slot online) or hold no reference. */
static inline bool ng_qsbr_poll(ng_qsbr_slot *slot, uint64_t goal)
{
    return ng_qsbr_goal_reached(slot, goal) || ng_qsbr_poll_slow(slot, goal);
}

/* Waits until `goal` is reached: polls for a couple of microseconds, then sleeps until a
 * quiescent report or detach wakes it (or 10 ms pass) and polls again. `slot` is the
 * caller's; it must be offline or at or past the goal (an online slot behind it would wait for
 * itself: NG_ESTATE). Sleeps without detaching anything: the caller's thread state, if any,
 * should be detached. A goal past the write sequence (ng_qsbr_shared_next) is advanced to first.
 * timeout_ns < 0: no limit. NG_OK, NG_TIMEOUT, NG_ESTATE, NG_EINVAL. */
int ng_qsbr_wait(ng_qsbr_slot *slot, uint64_t goal, int64_t timeout_ns);

/* Memory-aware goals (CPython 3.14's should_advance_qsbr_for_free / _for_page). Returns the
 * goal for `size` bytes retired now: advances (and sets slot->should_process) when a threshold
 * is crossed, otherwise returns shared_next. Size 0 = unknown (counts as one item). */
uint64_t ng_qsbr_goal_for_free(ng_qsbr_slot *slot, size_t size);
uint64_t ng_qsbr_goal_for_page(ng_qsbr_slot *slot, size_t page_bytes);

/* Child of fork(): reset the mutex and free every slot but `survivor` (may be NULL) and the
 * pinned ones, which are retained (their pins belong to readers that outlive the dead
 * threads, and only those readers may free them). Scans then stop after the highest slot
 * kept. */
void ng_qsbr_after_fork(ng_qsbr_shared *shared, ng_qsbr_slot *survivor);

typedef struct ng_qsbr_stats {
    uint64_t wr_seq, rd_seq;
    uint32_t registered, capacity;
    uint64_t scans, advances, stalls_reported;
    ng_qsbr_stall last_stall;
    uint32_t retained;
    uint32_t scan_slots; /* slots a scan walks now: 1 + the highest slot in use (high_water) */
} ng_qsbr_stats;
void ng_qsbr_get_stats(ng_qsbr_shared *shared, ng_qsbr_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_QSBR_H */
