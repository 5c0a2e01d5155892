/* QSBR slow paths: the slot space, scans, polls with the laggard hint and the stall detector,
 * waiting for a goal, memory-aware goals, fork. Hot paths and the layout are in nogil/qsbr.h.
 *
 * Slot space. Slots live in segments: segment k holds NG_QSBR_FIRST_SEGMENT << k slots, so
 * slot `i` sits in segment floor(log2(i / FIRST + 1)). A segment is allocated once, zeroed,
 * and never moves or shrinks before ng_qsbr_fini; a slot pointer is therefore valid for the
 * whole life of the shared state and growth needs no stop-the-world (CPython moves its array
 * inside one and rewrites every thread's pointer; R2 and R10 were bugs of that scheme).
 * `high_water` is one past the highest slot in use (allocated: reserved, registered or
 * retained); scans stop there, and every slot at or above it is free. A reservation takes the
 * lowest free slot below the mark, else the slot at the mark, raising it. Freeing the slot just
 * below the mark lowers the mark past every free slot under it, so the slots in use stay packed
 * at the bottom and a scan walks about as many slots as there are threads now, however many
 * came and went (with the old LIFO freelist and a mark that only grew, one burst of 1,000
 * threads made every later scan walk 1,000 slots). A slot given back while pinned
 * (ng_qsbr_pin) is retained instead: offline, ownerless and not free until its last pin goes,
 * so that a pinner's reader never finds another owner's seq in it; it holds the mark up.
 *
 * The free slots below the mark are the set bits of `free_bits`, one flat array of words
 * under the mutex, grown with the capacity. Flat rather than a bitmap beside each segment:
 * only mutex holders read it, so it may move when it grows, and the lowest-free search and
 * the top-down lowering are plain loops over words. The search costs high_water / 64 word
 * reads (16 for 1,000 slots) per reservation, which thread creation already makes rare; the
 * lowering clears each bit it passes once, so it is amortised O(1) per freed slot.
 *
 * shared->mutex is taken with ng_lock_detach: detached while it waits, like any blocking lock,
 * but deaf to the caller's ng_cancel token, because no caller has a way to report "not
 * taken" and going on without the lock would corrupt the slot space.
 *
 * Under shared->mutex: free_bits, writes of high_water, segment growth, `allocated`,
 * `retained`, `pins`, `tstate`, writes of `registered` and `retained` (statistics read them
 * relaxed). last_stall has its own raw lock. Scanners read nsegments, high_water and segment
 * pointers without the mutex (acquire loads of release/seq-cst stores) and every slot's `seq`.
 *
 * Fork: ng_qsbr_after_fork (the child keeps only the survivor's slot and the pinned ones,
 * rebuilds free_bits and the mark from them, and forgets the waiters, which were other
 * threads). Thread exit: the thread-state layer detaches and unregisters, which frees the slot
 * or retains it and may lower the mark; slots outlive their threads.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qsbr_internal.h"
#include "tstate_internal.h"

/* stall_since_ns value of a slot whose stall at stall_seq was already reported; clock values
 * are positive, so it cannot be mistaken for a time. */
#define STALL_REPORTED INT64_MIN

/* ng_qsbr_wait: poll this long before sleeping (a grace period with readers that report
 * often ends within a few microseconds), then sleep at most this long between polls when no
 * report wakes the waiter. The slice is only a safety net, and longer than a scheduler tick
 * on purpose: a sleep timer that becomes the CPU's next timer event must be programmed into
 * the hardware, which on a VM costs several microseconds per sleep (measured with qsbrbench,
 * 2 readers on 2 vCPUs: 1 ms slices, 18 us per grace period; 10 ms, 7.6 us). */
#define WAIT_SPIN_NS 2000
#define WAIT_SLICE_NS (10 * NG_NS_PER_MS)

int ng_test_fail_qsbr_segment_alloc;
int64_t ng_test_qsbr_wait_slice_ns;
void (*ng_test_qsbr_reserve_hook)(ng_qsbr_slot *slot);
void (*ng_test_qsbr_stall_sighting_hook)(ng_qsbr_slot *laggard, uint64_t seq);

/* ---- Torture knobs (build tag nogil_torture) ------------------------------------------- */

#ifdef NOGIL_TORTURE
/* Start 1000 advances before the 64-bit wrap so that tests cross it; odd like every
 * sequence, so no value on the way is NG_QSBR_OFFLINE. */
#define INITIAL_SEQ (UINT64_MAX - 2 * UINT64_C(1000))
/* Every second delayed free advances the write sequence. */
#define DEFAULT_ITEM_LIMIT 1

static NG_THREAD_LOCAL uint64_t torture_rng;

/* Yields the CPU about one time in four, to widen the windows between the steps of a scan,
 * a reservation or a poll. */
static void torture_yield(void)
{
    if (torture_rng == 0)
        torture_rng = ng_thread_id() * UINT64_C(0x9e3779b97f4a7c15) | 1;
    torture_rng ^= torture_rng << 13;
    torture_rng ^= torture_rng >> 7;
    torture_rng ^= torture_rng << 17;
    if ((torture_rng & 3) == 0)
        sched_yield();
}
#define TORTURE_YIELD() torture_yield()
#else
#define INITIAL_SEQ NG_QSBR_INITIAL
#define DEFAULT_ITEM_LIMIT NG_QSBR_DEFAULT_ITEM_LIMIT
#define TORTURE_YIELD() ((void)0)
#endif

/* ---- Segments ------------------------------------------------------------------------- */

static uint32_t segment_slots(uint32_t k) { return (uint32_t)NG_QSBR_FIRST_SEGMENT << k; }

/* Index of the first slot of segment k (the slots of all smaller segments). */
static uint32_t segment_base(uint32_t k) { return segment_slots(k) - NG_QSBR_FIRST_SEGMENT; }

/* Slots in the first n segments. */
static uint32_t capacity_of(uint32_t nsegments) { return segment_base(nsegments); }

/* The slot at global index i < capacity. Called under the mutex (or single-threaded), so the
 * segment pointers are plain reads. */
static ng_qsbr_slot *slot_at(ng_qsbr_shared *shared, uint32_t i)
{
    uint32_t k = 31u - (uint32_t)__builtin_clz(i / NG_QSBR_FIRST_SEGMENT + 1);
    return &shared->segments[k][i - segment_base(k)];
}

/* Words of free_bits that hold `slots` bits. */
static uint32_t words_for(uint32_t slots) { return (slots + 63) / 64; }

/* The bits of a word below bit n, 0 <= n <= 64. */
static uint64_t low_bits(uint32_t n) { return n >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << n) - 1; }

/* Allocates and publishes segment number nsegments, after making free_bits large enough for
 * it (a larger bitmap left behind by a failed segment allocation is harmless). Under the
 * mutex. */
static int grow(ng_qsbr_shared *shared)
{
    uint32_t k = shared->nsegments;
    if (k >= NG_QSBR_MAX_SEGMENTS)
        return NG_ENOMEM;
    if (ng_test_fail_qsbr_segment_alloc > 0) {
        ng_test_fail_qsbr_segment_alloc--;
        return NG_ENOMEM;
    }
    uint32_t words = words_for(capacity_of(k + 1));
    if (words > shared->free_words) {
        uint64_t *bits = realloc(shared->free_bits, words * sizeof(uint64_t));
        if (bits == NULL)
            return NG_ENOMEM;
        memset(bits + shared->free_words, 0, (words - shared->free_words) * sizeof(uint64_t));
        shared->free_bits = bits;
        shared->free_words = words;
    }
    size_t n = segment_slots(k);
    ng_qsbr_slot *seg = aligned_alloc(NG_QSBR_SLOT_ALIGN, n * sizeof(ng_qsbr_slot));
    if (seg == NULL)
        return NG_ENOMEM;
    memset(seg, 0, n * sizeof(ng_qsbr_slot));
    for (size_t j = 0; j < n; j++) {
        seg[j].shared = shared;
        seg[j].index = segment_base(k) + (uint32_t)j;
    }
    /* Release: a scanner that sees the new count also sees the pointer and the initialised
     * slots (seq 0, offline). */
    ng_atomic_store(&shared->segments[k], seg, NG_RELEASE);
    ng_atomic_store(&shared->nsegments, k + 1, NG_RELEASE);
    return NG_OK;
}

/* ---- Life cycle ----------------------------------------------------------------------- */

int ng_qsbr_init(ng_qsbr_shared *shared)
{
    if (shared == NULL)
        return NG_EINVAL;
    memset(shared, 0, sizeof(*shared));
    shared->wr_seq = INITIAL_SEQ;
    shared->rd_seq = INITIAL_SEQ;
    shared->item_limit = DEFAULT_ITEM_LIMIT;
    shared->mem_limit = NG_QSBR_DEFAULT_MEM_LIMIT;
    shared->page_mem_limit = NG_QSBR_DEFAULT_PAGE_MEM_LIMIT;
    return NG_OK;
}

int ng_qsbr_fini(ng_qsbr_shared *shared)
{
    if (shared == NULL)
        return NG_EINVAL;
    ng_lock_detach(&shared->mutex);
    if (shared->registered != 0 || shared->retained != 0) {
        ng_mutex_unlock(&shared->mutex);
        return NG_EBUSY;
    }
    /* Nobody may scan or poll any more (the owner is deleting the shared state), so the
     * segments can go; the fields are reset so that a second fini is a no-op. */
    for (uint32_t k = 0; k < shared->nsegments; k++) {
        free(shared->segments[k]);
        shared->segments[k] = NULL;
    }
    ng_atomic_store(&shared->nsegments, 0, NG_RELAXED);
    ng_atomic_store(&shared->high_water, 0, NG_RELAXED);
    ng_atomic_store(&shared->laggard, NULL, NG_RELAXED);
    free(shared->free_bits);
    shared->free_bits = NULL;
    shared->free_words = 0;
    ng_mutex_unlock(&shared->mutex);
    return NG_OK;
}

/* ---- Reserve / register ----------------------------------------------------------------- */

/* The lowest free slot below `hw` (the mark), or `hw` if there is none. Under the mutex. */
static uint32_t lowest_free(ng_qsbr_shared *shared, uint32_t hw)
{
    for (uint32_t w = 0; w < words_for(hw); w++)
        if (shared->free_bits[w] != 0)
            return w * 64 + (uint32_t)__builtin_ctzll(shared->free_bits[w]);
    return hw;
}

/* The slot `top`, just below the mark, was freed: lowers the mark to one past the highest
 * slot in use under it (allocated: its free bit is clear), clearing the free bits it passes,
 * so that no free bit lies at or above the mark. Under the mutex. */
static void lower_mark(ng_qsbr_shared *shared, uint32_t top)
{
    uint32_t hw = top;
    while (hw > 0) {
        uint32_t w = (hw - 1) / 64;
        uint64_t below = low_bits(hw - w * 64); /* slots w*64 .. hw-1 */
        uint64_t in_use = ~shared->free_bits[w] & below;
        if (in_use != 0) {
            uint32_t last = 63 - (uint32_t)__builtin_clzll(in_use);
            shared->free_bits[w] &= low_bits(last + 1);
            hw = w * 64 + last + 1;
            break;
        }
        shared->free_bits[w] = 0; /* bits at or above the old mark were clear already */
        hw = w * 64;
    }
    TORTURE_YIELD();
    /* Release, and no more: the slots from the new mark up are offline and ownerless (free;
     * retained and reserved slots stop the loop above), so a scan that stops at the new mark
     * misses no online thread, and one that read the old mark reads offline slots, harmless.
     * A slot up there gets an owner again only through ng_qsbr_reserve's seq-cst raising
     * store, which makes it visible to scans as any fresh slot (the free bits end below the
     * mark). A scan that reads this store (acquire) and so skips a slot freed here is ordered
     * after that slot's owner went offline (its release store of seq 0 preceded the
     * unregister, under this mutex), just as if it had read the offline seq; and it sees
     * every segment publication the slots below the mark need. */
    ng_atomic_store(&shared->high_water, hw, NG_RELEASE);
}

int ng_qsbr_reserve(ng_qsbr_shared *shared, ng_qsbr_slot **slot_out)
{
    if (shared == NULL || slot_out == NULL)
        return NG_EINVAL;
    ng_lock_detach(&shared->mutex);
    ng_qsbr_slot *slot;
    /* Relaxed: only mutex holders write high_water. */
    uint32_t hw = ng_atomic_load(&shared->high_water, NG_RELAXED);
    uint32_t i = lowest_free(shared, hw);
    if (i < hw) {
        /* Below the mark. The last raising (seq-cst) store before our lock left the mark
         * above this slot (raises go one slot at a time, and only lowerings that stopped
         * above it followed), and it happened before the owner's attach; while the slot is
         * in use no lowering passes it. So the argument at the raising store below holds for
         * this slot unchanged. */
        shared->free_bits[i / 64] &= ~(UINT64_C(1) << (i % 64));
        slot = slot_at(shared, i);
    }
    else {
        if (hw == capacity_of(shared->nsegments)) {
            int err = grow(shared);
            if (err != NG_OK) {
                ng_mutex_unlock(&shared->mutex);
                return err;
            }
        }
        TORTURE_YIELD();
        slot = slot_at(shared, hw);
        /* Seq-cst, not just release: a scan's seq-cst fence must order this store before or
         * after it as a whole. A thread that reserves, attaches and then reads a pointer is
         * either seen by a scan (this store precedes the scanner's fence, so its load of
         * high_water reads this store or a later one, and every later one keeps the mark
         * above the slot while it is in use: lowering stops at the highest allocated slot)
         * or the scan's fence precedes its attach. Every slot at or above the mark, also one
         * used before and freed when the mark dropped, is handed out only here, through this
         * store: the free bits never cover the mark or above. */
        ng_atomic_store(&shared->high_water, hw + 1, NG_SEQ_CST);
    }
    /* A fresh owner: nothing of the previous one's counters or stall history. The slot is
     * offline (unregister required it; fresh slots are zero), so no scanner looks at these
     * owner-side fields; the stall words are written by scanners only for online slots. */
    slot->should_process = 0;
    slot->deferred_count = 0;
    slot->deferred_memory = 0;
    slot->deferred_page_memory = 0;
    ng_atomic_store(&slot->stall_seq, 0, NG_RELAXED);
    ng_atomic_store(&slot->stall_since_ns, 0, NG_RELAXED);
    ng_atomic_store(&slot->tstate, NULL, NG_RELAXED);
    ng_atomic_store(&slot->allocated, 1, NG_RELAXED);
    /* Written under the mutex, read without it by statistics. */
    ng_atomic_store(&shared->registered, shared->registered + 1, NG_RELAXED);
    ng_mutex_unlock(&shared->mutex);
    TORTURE_YIELD();
    if (ng_test_qsbr_reserve_hook != NULL)
        ng_test_qsbr_reserve_hook(slot);
    *slot_out = slot;
    return NG_OK;
}

/* Whether `slot` can be a slot: non-NULL, with the back-pointer every slot gets when its
 * segment is allocated (a zeroed or cleared struct has none). */
static bool slot_valid(const ng_qsbr_slot *slot)
{
    return slot != NULL && slot->shared != NULL;
}

/* Frees a slot that nobody owns or pins: a free bit below the mark, or, for the top slot, a
 * lower mark. Under the mutex; the slot is offline. */
static void free_slot(ng_qsbr_shared *shared, ng_qsbr_slot *slot)
{
    ng_atomic_store(&slot->tstate, NULL, NG_RELAXED);
    ng_atomic_store(&slot->allocated, 0, NG_RELAXED);
    slot->retained = 0;
    uint32_t i = slot->index;
    /* Relaxed: only mutex holders write high_water. */
    if (i + 1 < ng_atomic_load(&shared->high_water, NG_RELAXED))
        shared->free_bits[i / 64] |= UINT64_C(1) << (i % 64);
    else
        lower_mark(shared, i);
}

/* The owner (or a fork child, for a dead thread) gives a reserved or registered slot back: free,
 * or retained while pinned, so that the pinner's reader keeps reading an offline slot that
 * nobody else owns. Under the mutex; the slot is offline. Statistics are written under the
 * mutex and read without it. */
static void release_slot(ng_qsbr_shared *shared, ng_qsbr_slot *slot)
{
    ng_atomic_store(&shared->registered, shared->registered - 1, NG_RELAXED);
    if (slot->pins == 0) {
        free_slot(shared, slot);
        return;
    }
    ng_atomic_store(&slot->tstate, NULL, NG_RELAXED);
    slot->retained = 1;
    ng_atomic_store(&shared->retained, shared->retained + 1, NG_RELAXED);
}

int ng_qsbr_unreserve(ng_qsbr_slot *slot)
{
    if (!slot_valid(slot))
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    ng_lock_detach(&shared->mutex);
    int err = NG_OK;
    if (!slot->allocated || slot->retained || slot->tstate != NULL ||
        ng_atomic_load(&slot->seq, NG_RELAXED) != NG_QSBR_OFFLINE)
        err = NG_ESTATE; /* free or retained already, or registered (use unregister) */
    else
        release_slot(shared, slot);
    ng_mutex_unlock(&shared->mutex);
    return err;
}

int ng_qsbr_register(ng_qsbr_slot *slot, struct ng_tstate *tstate)
{
    if (!slot_valid(slot) || tstate == NULL)
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    ng_lock_detach(&shared->mutex);
    int err = NG_OK;
    if (!slot->allocated || slot->retained || slot->tstate != NULL)
        err = NG_ESTATE; /* not reserved, or registered already */
    else
        ng_atomic_store(&slot->tstate, tstate, NG_RELAXED);
    ng_mutex_unlock(&shared->mutex);
    return err;
}

int ng_qsbr_unregister(ng_qsbr_slot *slot)
{
    if (!slot_valid(slot))
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    ng_lock_detach(&shared->mutex);
    int err = NG_OK;
    /* Relaxed seq: only the owner (the caller) sets it online, so it is our own value. */
    if (!slot->allocated || slot->tstate == NULL ||
        ng_atomic_load(&slot->seq, NG_RELAXED) != NG_QSBR_OFFLINE)
        err = NG_ESTATE; /* free, reserved only (use unreserve), retained, or still online */
    else
        release_slot(shared, slot);
    ng_mutex_unlock(&shared->mutex);
    return err;
}

int ng_qsbr_pin(ng_qsbr_slot *slot)
{
    if (!slot_valid(slot))
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    ng_lock_detach(&shared->mutex);
    int err = NG_OK;
    if (!slot->allocated || slot->retained)
        err = NG_ESTATE; /* nobody owns it: there is nothing to read it for */
    else if (slot->pins == UINT32_MAX)
        err = NG_EINVAL;
    else
        slot->pins++;
    ng_mutex_unlock(&shared->mutex);
    return err;
}

int ng_qsbr_unpin(ng_qsbr_slot *slot)
{
    if (!slot_valid(slot))
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    ng_lock_detach(&shared->mutex);
    int err = NG_OK;
    if (!slot->allocated || slot->pins == 0) {
        err = NG_ESTATE;
    }
    else if (--slot->pins == 0 && slot->retained) {
        /* Its owner is gone and so is the last reader: the slot can serve a new owner. */
        ng_atomic_store(&shared->retained, shared->retained - 1, NG_RELAXED);
        free_slot(shared, slot);
    }
    ng_mutex_unlock(&shared->mutex);
    return err;
}

/* ---- Tunables --------------------------------------------------------------------------- */

void ng_qsbr_set_limits(ng_qsbr_shared *shared, uint32_t items, uint64_t mem_bytes,
                        uint64_t page_mem_bytes)
{
    if (shared == NULL)
        return;
    /* Relaxed: each limit is an independent threshold; a goal computed with a mix of old and
     * new values is still a valid goal. */
    if (items != 0)
        ng_atomic_store(&shared->item_limit, items, NG_RELAXED);
    if (mem_bytes != 0)
        ng_atomic_store(&shared->mem_limit, mem_bytes, NG_RELAXED);
    if (page_mem_bytes != 0)
        ng_atomic_store(&shared->page_mem_limit, page_mem_bytes, NG_RELAXED);
}

void ng_qsbr_set_stall_handler(ng_qsbr_shared *shared, int64_t threshold_ns,
                               ng_qsbr_stall_fn *fn, void *arg)
{
    if (shared == NULL)
        return;
    /* fn and arg are read together under the mutex by the reporter; the threshold is a
     * relaxed hint read on every failed poll (0 or negative: off). */
    ng_lock_detach(&shared->mutex);
    shared->stall_fn = fn;
    shared->stall_arg = arg;
    ng_atomic_store(&shared->stall_ns, fn != NULL && threshold_ns > 0 ? threshold_ns : 0,
                    NG_RELAXED);
    ng_mutex_unlock(&shared->mutex);
}

/* ---- Scan and poll ---------------------------------------------------------------------- */

/* Computes the minimum sequence of the online slots (at most wr_seq), publishes it as rd_seq
 * if newer, and returns the newest rd_seq known. *laggard_out gets the online slot with the
 * smallest seq that is behind wr_seq (NULL if none), *laggard_seq its seq. */
static uint64_t scan(ng_qsbr_shared *shared, ng_qsbr_slot **laggard_out, uint64_t *laggard_seq)
{
    ng_atomic_fetch_add(&shared->scans, 1, NG_RELAXED); /* statistics only */
    /* Pairs with the attach's fence (Dekker): either we see a thread's online seq below, or
     * that thread's loads after its attach see the unlinks made before our caller's advance. */
    ng_atomic_fence(NG_SEQ_CST);
    uint64_t min = ng_atomic_load(&shared->wr_seq, NG_ACQUIRE);
    ng_qsbr_slot *laggard = NULL;
    /* Acquire: every slot below high_water lies in a segment published before it. */
    uint32_t hw = ng_atomic_load(&shared->high_water, NG_ACQUIRE);
    uint32_t nseg = ng_atomic_load(&shared->nsegments, NG_ACQUIRE);
    for (uint32_t k = 0; k < nseg && segment_base(k) < hw; k++) {
        ng_qsbr_slot *seg = ng_atomic_load(&shared->segments[k], NG_ACQUIRE);
        uint32_t n = hw - segment_base(k);
        if (n > segment_slots(k))
            n = segment_slots(k);
        for (uint32_t j = 0; j < n; j++) {
            /* Acquire: pairs with the release of quiescent_state and detach, so what the
             * thread read before that report happens-before our caller's free. */
            uint64_t seq = ng_atomic_load(&seg[j].seq, NG_ACQUIRE);
            if (seq != NG_QSBR_OFFLINE && NG_QSBR_LT(seq, min)) {
                min = seq;
                laggard = &seg[j];
            }
        }
        TORTURE_YIELD();
    }
    /* rd_seq only moves forward. Seq-cst on success pairs with goal_reached's seq-cst load
     * (it includes release: our acquire loads above happen-before a thread that frees after
     * seeing the value). Acquire on failure: a newer value another scanner published carries
     * its own scan's happens-before edges to us. */
    uint64_t rd = ng_atomic_load(&shared->rd_seq, NG_ACQUIRE);
    while (NG_QSBR_LT(rd, min)) {
        if (ng_atomic_cas(&shared->rd_seq, &rd, min, NG_SEQ_CST, NG_ACQUIRE)) {
            rd = min;
            break;
        }
    }
    if (laggard_out != NULL) {
        *laggard_out = laggard;
        *laggard_seq = min;
    }
    return rd;
}

uint64_t ng_qsbr_scan(ng_qsbr_shared *shared)
{
    if (shared == NULL)
        return NG_QSBR_OFFLINE; /* never a sequence (they are odd) */
    return scan(shared, NULL, NULL);
}

/* Reports `laggard` (seen online at `seq`, behind `goal`) once it has been behind for longer
 * than the stall threshold, once per (slot, seq). The bookkeeping words are shared by every
 * poller: a first sighting writes the time, then the seq (release), so a poller that sees the
 * seq (acquire) also sees a time at least as recent; the report is claimed by a CAS of the
 * time to STALL_REPORTED, so a concurrent re-sighting at a new seq (which rewrites the time
 * first) makes the claim fail instead of being lost. */
static void watch_stall(ng_qsbr_shared *shared, ng_qsbr_slot *poller, ng_qsbr_slot *laggard,
                        uint64_t seq, uint64_t goal)
{
    int64_t threshold = ng_atomic_load(&shared->stall_ns, NG_RELAXED);
    /* The poller's own slot behind its goal is no stall: it is not waiting for another
     * thread, its own next quiescent report moves the goal on, and the handler would name
     * the thread running it. Other pollers still watch that slot. */
    if (threshold <= 0 || laggard == poller)
        return;
    int64_t now = ng_monotonic_ns();
    if (ng_atomic_load(&laggard->stall_seq, NG_ACQUIRE) != seq) {
        if (ng_test_qsbr_stall_sighting_hook != NULL)
            ng_test_qsbr_stall_sighting_hook(laggard, seq);
        /* Under stall_lock, re-checked: since our load another poller may have recorded
         * this very sighting, or a newer one (our seq is then stale), and even reported it;
         * writing the time again would make the stall new and report it twice. A slot's seq
         * only grows while it has an owner (a new owner starts from 0), so a recorded seq
         * that is not older than ours is left alone. */
        ng_raw_mutex_lock(&shared->stall_lock);
        uint64_t recorded = ng_atomic_load(&laggard->stall_seq, NG_RELAXED);
        if (recorded == 0 || NG_QSBR_LT(recorded, seq)) {
            /* The clock read again: we may have waited here. */
            ng_atomic_store(&laggard->stall_since_ns, ng_monotonic_ns(), NG_RELAXED);
            ng_atomic_store(&laggard->stall_seq, seq, NG_RELEASE);
        }
        ng_raw_mutex_unlock(&shared->stall_lock);
        return;
    }
    int64_t since = ng_atomic_load(&laggard->stall_since_ns, NG_RELAXED);
    if (since == STALL_REPORTED || now - since <= threshold)
        return;
    /* Never wait for the mutex here: its holder may be a thread that a stop-the-world
     * suspended, and the poller may be that stop-the-world's requester (spec P1.3). A busy
     * mutex only postpones the report to a later poll. */
    if (!ng_mutex_trylock(&shared->mutex))
        return;
    ng_qsbr_stall_fn *fn = shared->stall_fn;
    void *arg = shared->stall_arg;
    ng_qsbr_stall stall;
    bool report = fn != NULL && ng_atomic_load(&laggard->stall_seq, NG_ACQUIRE) == seq &&
                  ng_atomic_cas(&laggard->stall_since_ns, &since, STALL_REPORTED, NG_RELAXED,
                                NG_RELAXED);
    if (report) {
        stall = (ng_qsbr_stall){
            .goal = goal,
            .attached = true,
            .behind_ns = now - since,
            .slot_index = laggard->index,
        };
        /* Under the mutex the owner cannot unregister, and the thread-state layer frees a
         * state only after unregistering it, so the pointer is live. Its fields are written
         * by their owner; relaxed reads give some recent value, which is all a report needs. */
        ng_tstate *ts = ng_atomic_load(&laggard->tstate, NG_RELAXED);
        if (ts != NULL) {
            stall.thread_id = ng_atomic_load(&ts->thread_id, NG_RELAXED);
            stall.tstate_id = ng_atomic_load(&ts->id, NG_RELAXED);
            stall.pending_bytes = ng_atomic_load(&ts->delayed.bytes, NG_RELAXED);
        }
        ng_raw_mutex_lock(&shared->stall_lock);
        shared->last_stall = stall;
        ng_raw_mutex_unlock(&shared->stall_lock);
        ng_atomic_fetch_add(&shared->stalls_reported, 1, NG_RELAXED); /* statistics */
    }
    ng_mutex_unlock(&shared->mutex);
    if (report)
        fn(arg, &stall);
}

bool ng_qsbr_poll_slow(ng_qsbr_slot *slot, uint64_t goal)
{
    if (!slot_valid(slot))
        return false;
    ng_qsbr_shared *shared = slot->shared;
    /* A goal past the write sequence cannot be reached until someone advances: nothing to
     * scan for, and no thread to blame. Relaxed: a stale value only makes us scan. */
    if (NG_QSBR_LT(ng_atomic_load(&shared->wr_seq, NG_RELAXED), goal))
        return false;
    /* The laggard of the last failed poll still online and behind: the goal is not reached,
     * whatever the other slots say. The hint is a slot pointer (slots are never freed while
     * the shared state lives); whoever owns the slot now, an online seq behind the goal is a
     * reason to say no. Relaxed loads: a "no" needs no ordering. */
    ng_qsbr_slot *laggard = ng_atomic_load(&shared->laggard, NG_RELAXED);
    if (laggard != NULL) {
        uint64_t seq = ng_atomic_load(&laggard->seq, NG_RELAXED);
        if (seq != NG_QSBR_OFFLINE && NG_QSBR_LT(seq, goal)) {
            watch_stall(shared, slot, laggard, seq, goal);
            return false;
        }
    }
    TORTURE_YIELD();
    uint64_t laggard_seq = 0;
    uint64_t rd = scan(shared, &laggard, &laggard_seq);
    if (NG_QSBR_LEQ(goal, rd))
        return true;
    /* rd is behind goal <= wr_seq, so our scan found an online slot behind the goal (a newer
     * rd_seq published by another scanner would only be closer to the goal). */
    if (laggard != NULL && NG_QSBR_LT(laggard_seq, goal)) {
        ng_atomic_store(&shared->laggard, laggard, NG_RELAXED); /* a hint, see above */
        watch_stall(shared, slot, laggard, laggard_seq, goal);
    }
    return false;
}

/* ---- Waiting --------------------------------------------------------------------------- */

void ng_qsbr_report(ng_qsbr_slot *slot, uint64_t current)
{
    /* Acquire (with the caller's relaxed load of wr_seq): the thread that adopts `current`
     * sees the unlinks that preceded the advance producing it. */
    ng_atomic_fence(NG_ACQUIRE);
    /* Release: the reads made before this report happen-before a reclaimer that sees it. */
    ng_atomic_store(&slot->seq, current, NG_RELEASE);
    /* Pairs with ng_qsbr_wait's fence (Dekker): either the waiter's poll sees this seq, or
     * this load sees the waiter counted. */
    ng_atomic_fence(NG_SEQ_CST);
    if (ng_atomic_load(&slot->shared->waiters, NG_RELAXED) != 0)
        ng_qsbr_wake_waiters(slot->shared);
}

void ng_qsbr_wake_waiters(ng_qsbr_shared *shared)
{
    if (shared == NULL)
        return;
    /* The bump makes a waiter that read the old value before counting itself, and has not
     * parked yet, find its parking word changed (ng_park validates it): no wake is lost
     * between a waiter's last poll and its sleep. */
    ng_atomic_fetch_add(&shared->wake_seq, 1, NG_RELEASE);
    ng_unpark_all(&shared->wake_seq);
}

int ng_qsbr_wait(ng_qsbr_slot *slot, uint64_t goal, int64_t timeout_ns)
{
    if (!slot_valid(slot))
        return NG_EINVAL;
    ng_qsbr_shared *shared = slot->shared;
    /* Relaxed: only the caller (the owner) writes its seq. */
    uint64_t own = ng_atomic_load(&slot->seq, NG_RELAXED);
    if (own != NG_QSBR_OFFLINE && NG_QSBR_LT(own, goal))
        return NG_ESTATE;
    /* A goal past the write sequence (ng_qsbr_shared_next, a goal_for_free that did not
     * advance) is reached only after an advance, and an advance wakes nobody: with every
     * other slot offline no report would follow, and we would sleep a whole slice per advance
     * or for ever without one. Advance ourselves, as liburcu's synchronize_rcu does (an extra
     * advance is always safe). Relaxed: a stale value only costs a spare advance. */
    if (NG_QSBR_LT(ng_atomic_load(&shared->wr_seq, NG_RELAXED), goal))
        (void)ng_qsbr_advance(shared);
    int64_t start = ng_monotonic_ns();
    int64_t deadline = timeout_ns < 0 ? NG_DEADLINE_NEVER : ng_add_sat(start, timeout_ns);
    int64_t spin_until = ng_add_sat(start, WAIT_SPIN_NS);
    int64_t slice = ng_test_qsbr_wait_slice_ns > 0 ? ng_test_qsbr_wait_slice_ns : WAIT_SLICE_NS;
    for (unsigned polls = 1; !ng_qsbr_poll(slot, goal); polls++) {
        /* Spin, with a look at the clock every 16 polls. */
        if (polls % 16 != 0) {
            ng_cpu_relax();
            continue;
        }
        int64_t now = ng_monotonic_ns();
        if (now >= deadline)
            return NG_TIMEOUT;
        if (now < spin_until)
            continue;
        uint32_t seen = ng_atomic_load(&shared->wake_seq, NG_ACQUIRE);
        ng_atomic_fetch_add(&shared->waiters, 1, NG_RELAXED);
        /* Pairs with the fence of ng_qsbr_report / detach (Dekker): either the poll below
         * sees their new seq, or they see us counted and wake us. */
        ng_atomic_fence(NG_SEQ_CST);
        TORTURE_YIELD();
        if (!ng_qsbr_poll(slot, goal)) {
            int64_t remaining = ng_deadline_remaining(deadline);
            ng_park(&shared->wake_seq, &seen, sizeof(seen), remaining < slice ? remaining : slice,
                    NULL, 0);
        }
        ng_atomic_fetch_sub(&shared->waiters, 1, NG_RELAXED); /* a count; wakes are idempotent */
    }
    return NG_OK;
}

/* ---- Memory-aware goals ----------------------------------------------------------------- */

static uint64_t add_sat_u64(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

/* A threshold was crossed: ask the owner to process and return the goal of a fresh advance,
 * which is reached as soon as every online thread reports once more. */
static uint64_t force_advance(ng_qsbr_slot *slot)
{
    /* Relaxed: the owner reads it; others (stats, the Go wrapper) only peek. */
    ng_atomic_store(&slot->should_process, 1, NG_RELAXED);
    return ng_qsbr_advance(slot->shared);
}

/* The goal for memory the caller unlinked before the call, without advancing. The seq-cst
 * fence orders the unlink (a store) before the load of wr_seq: the acquire load alone does
 * not, so the load could read a sequence older than one a concurrent advance already
 * published while the unlink is still invisible (x86's store buffer does exactly this); a
 * reader that adopted the newer sequence and then still found the memory would not hold
 * back the goal. The advance path needs no fence: its seq-cst RMW releases the unlink to
 * every thread that adopts the new sequence. */
static uint64_t goal_without_advance(ng_qsbr_shared *shared)
{
    ng_atomic_fence(NG_SEQ_CST);
    return ng_qsbr_shared_next(shared);
}

uint64_t ng_qsbr_goal_for_free(ng_qsbr_slot *slot, size_t size)
{
    if (!slot_valid(slot))
        return NG_QSBR_OFFLINE;
    ng_qsbr_shared *shared = slot->shared;
    /* The counters are owner-only (this thread's): plain accesses. CPython tests "one block
     * over the limit" first; the sum test below covers it (the sum is then over the limit
     * too, and both ways end with the counters reset and an advance). */
    if (slot->deferred_count < UINT32_MAX)
        slot->deferred_count++;
    slot->deferred_memory = add_sat_u64(slot->deferred_memory, size);
    if (slot->deferred_count > ng_atomic_load(&shared->item_limit, NG_RELAXED) ||
        slot->deferred_memory > ng_atomic_load(&shared->mem_limit, NG_RELAXED)) {
        slot->deferred_count = 0;
        slot->deferred_memory = 0;
        return force_advance(slot);
    }
    return goal_without_advance(shared);
}

uint64_t ng_qsbr_goal_for_page(ng_qsbr_slot *slot, size_t page_bytes)
{
    if (!slot_valid(slot))
        return NG_QSBR_OFFLINE;
    ng_qsbr_shared *shared = slot->shared;
    /* As above: a single page over the limit crosses it by itself. */
    slot->deferred_page_memory = add_sat_u64(slot->deferred_page_memory, page_bytes);
    if (slot->deferred_page_memory > ng_atomic_load(&shared->page_mem_limit, NG_RELAXED)) {
        slot->deferred_page_memory = 0;
        return force_advance(slot);
    }
    return goal_without_advance(shared);
}

/* ---- Fork and statistics ---------------------------------------------------------------- */

void ng_qsbr_after_fork(ng_qsbr_shared *shared, ng_qsbr_slot *survivor)
{
    if (shared == NULL)
        return;
    /* Only the forking thread exists: the mutex may have been held by a dead thread, and no
     * other slot has an owner any more. The child is single-threaded here, so plain and
     * relaxed accesses suffice. */
    ng_mutex_at_fork_reinit(&shared->mutex);
    shared->stall_lock = (ng_raw_mutex)NG_RAW_MUTEX_INIT;
    ng_atomic_store(&shared->laggard, NULL, NG_RELAXED);
    ng_atomic_store(&shared->waiters, 0, NG_RELAXED); /* they were other threads */
    uint32_t hw = shared->high_water;
    for (uint32_t i = 0; i < hw; i++) {
        ng_qsbr_slot *slot = slot_at(shared, i);
        if (slot == survivor || !slot->allocated || slot->retained)
            continue;
        /* A dead thread's slot may even be online (it was attached when the fork happened
         * outside a stop-the-world): it must not hold back grace periods in the child. A
         * pinned one is retained, offline, as if its thread had released it. */
        ng_atomic_store(&slot->seq, NG_QSBR_OFFLINE, NG_RELAXED);
        release_slot(shared, slot);
    }
    /* The freeing above has lowered the mark already if the bitmap was consistent; but a dead
     * thread may have held the mutex half-way through a reservation or a free. The slots'
     * `allocated` flags are the truth (a reservation sets it last, a free clears it first,
     * and the dead thread will never finish either), so rebuild the bits and the mark from
     * them: every slot of the capacity, since the snapshot may hold a half-raised mark. */
    uint32_t capacity = capacity_of(shared->nsegments);
    if (shared->free_words != 0)
        memset(shared->free_bits, 0, shared->free_words * sizeof(uint64_t));
    uint32_t top = 0;
    for (uint32_t i = 0; i < capacity; i++)
        if (slot_at(shared, i)->allocated)
            top = i + 1;
    for (uint32_t i = 0; i < top; i++)
        if (!slot_at(shared, i)->allocated)
            shared->free_bits[i / 64] |= UINT64_C(1) << (i % 64);
    ng_atomic_store(&shared->high_water, top, NG_RELAXED);
}

void ng_qsbr_get_stats(ng_qsbr_shared *shared, ng_qsbr_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof(*out));
    if (shared == NULL)
        return;
    /* Relaxed: statistics, each value recent on its own. */
    out->wr_seq = ng_atomic_load(&shared->wr_seq, NG_RELAXED);
    out->rd_seq = ng_atomic_load(&shared->rd_seq, NG_RELAXED);
    out->capacity = capacity_of(ng_atomic_load(&shared->nsegments, NG_RELAXED));
    out->scans = ng_atomic_load(&shared->scans, NG_RELAXED);
    out->advances = ng_atomic_load(&shared->advances, NG_RELAXED);
    out->stalls_reported = ng_atomic_load(&shared->stalls_reported, NG_RELAXED);
    /* Without the mutex, so a thread that has stopped the world can read statistics. */
    out->registered = ng_atomic_load(&shared->registered, NG_RELAXED);
    out->retained = ng_atomic_load(&shared->retained, NG_RELAXED);
    out->scan_slots = ng_atomic_load(&shared->high_water, NG_RELAXED);
    ng_raw_mutex_lock(&shared->stall_lock);
    out->last_stall = shared->last_stall;
    ng_raw_mutex_unlock(&shared->stall_lock);
}
