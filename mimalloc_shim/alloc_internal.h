/* Private declarations of the page allocator (nogil/alloc.h is the contract).
 *
 * Ownership of the structures:
 *  - ng_mi_thread (a thread state's four heaps) and everything reachable from its queues, its
 *    segment lists and its deferred-page FIFO are touched by the owning thread only, or by
 *    another thread while the owner's world is stopped, or by the fork child's survivor for a
 *    dead thread. Counters other threads read for statistics are written with relaxed atomic
 *    stores by that single writer.
 *  - ng_mi_interp (interp->ext[i]) is shared: its lists are under `lock` (an ng_raw_mutex:
 *    short critical sections that never suspend, so a thread that stopped the world can take
 *    it, spec R9, and so can the before_fork hook, after the stops: heapset.c).
 *  - page->thread_free and heap data's thread_delayed_free are the only words written by
 *    arbitrary threads (see page.c for the state machine in thread_free's low bits).
 */
#ifndef NG_MI_ALLOC_INTERNAL_H
#define NG_MI_ALLOC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nogil/alloc.h"
#include "nogil/raw_mutex.h"

/* ---- Test hooks -------------------------------------------------------------------------- */

/* The next N segment mappings fail as if the kernel refused them (decremented atomically). */
extern int ng_mi_test_fail_mmap;
/* Bytes this allocator has mapped in the whole process (leak checks). */
extern uint64_t ng_mi_os_mapped_bytes;

/* ---- Size classes ----------------------------------------------------------------------- */

/* Bin 0 is unused; bins 1..8 are 8..64 bytes; then four bins per doubling up to
 * NG_MI_LARGE_MAX (bin 68 = 2 MiB). */
#define NG_MI_BIN_COUNT 69
#define NG_MI_BIN_HUGE NG_MI_BIN_COUNT /* marks a huge page */

size_t ng_mi_bin_of_size(size_t size); /* size <= NG_MI_LARGE_MAX */
size_t ng_mi_bin_size(size_t bin);
/* The smallest block an object heap of this kind hands out. */
size_t ng_mi_kind_min_size(int heap_kind);
uint16_t ng_mi_kind_prefix(int heap_kind);
/* The bin of a request of `size` bytes in a heap of `heap_kind` (minimum size applied). */
size_t ng_mi_heap_bin(int heap_kind, size_t size);
/* The direct[] word sizes served by `bin` in a heap of `heap_kind`: [*lo, *hi], or false when
 * the bin is above NG_MI_DIRECT_MAX. */
bool ng_mi_bin_wsize_range(int heap_kind, size_t bin, size_t *lo, size_t *hi);
/* The same, precomputed by ng_mi_size_init (once, before any heap exists): lo > hi when the
 * bin has no direct entries. */
extern uint8_t ng_mi_direct_lo[NG_MI_HEAP_COUNT][NG_MI_BIN_COUNT];
extern uint8_t ng_mi_direct_hi[NG_MI_HEAP_COUNT][NG_MI_BIN_COUNT];
/* ng_mi_heap_bin(kind, w * 8) for every direct[] word size w, precomputed likewise. */
extern uint8_t ng_mi_direct_bin[NG_MI_HEAP_COUNT][NG_MI_DIRECT_WSIZE + 1];
void ng_mi_size_init(void);

/* ---- Pages: private flags (ng_mi_page.reserved_flags) ------------------------------------ */

enum {
    NG_MI_PF_QUEUED = 1u << 0,      /* in a bin queue or the full queue of its heap */
    NG_MI_PF_QSBR_LINKED = 1u << 1, /* in its owner thread's deferred-page FIFO */
    NG_MI_PF_ROTATED = 1u << 2,     /* found exhausted and sent round its bin since the slow
                                     * path last took blocks from it (malloc.c) */
};

/* The two low bits of page->thread_free (documented in page.c). */
enum {
    NG_MI_DELAY_NORMAL = 0,   /* foreign frees push onto the page */
    NG_MI_DELAY_USE = 1,      /* page is full: the next foreign free notifies the heap */
    NG_MI_DELAY_FREEING = 2,  /* transient: a freer holds the heap pointer */
    NG_MI_DELAY_NEVER = 3,    /* abandoned: always push onto the page */
};
#define NG_MI_DELAY_MASK ((uintptr_t)3)

/* ---- Heaps and thread heap sets ------------------------------------------------------------ */

typedef struct ng_mi_page_queue {
    ng_mi_page *first, *last;
} ng_mi_page_queue;

/* Counters since creation (single writer: relaxed stores; readers: relaxed loads). */
typedef struct ng_mi_counters {
    uint64_t pages_deferred;
    uint64_t pages_released_after_goal;
    uint64_t pages_reused_same_class;
    uint64_t segments_reclaimed;
    uint64_t mmap_failures;
} ng_mi_counters;

typedef struct ng_mi_heap_data {
    ng_mi_page_queue bins[NG_MI_BIN_COUNT];
    ng_mi_page_queue full;
    /* Blocks other threads freed into full pages (atomic list, linked at the heap prefix). */
    uintptr_t thread_delayed_free;
    ng_mi_segment *segments;        /* owned small/medium/large segments of this heap kind */
    uint8_t retired_min, retired_max; /* bins that may hold a MEM page kept by the retire delay */
    ng_mi_counters c;
    ng_mi_stats snap;               /* the owner's last exact stats (gauges), relaxed */
} ng_mi_heap_data;

struct ng_mi_interp;

struct ng_mi_thread {
    ng_mi_heap heaps[NG_MI_HEAP_COUNT];
    ng_mi_heap_data data[NG_MI_HEAP_COUNT];
    ng_tstate *tstate;
    struct ng_mi_interp *mi;
    uint64_t thread_id;
    ng_mi_page *qsbr_head, *qsbr_tail; /* deferred pages, oldest first */
    ng_mi_segment *cached;          /* at most one empty small segment kept mapped */
    ng_mi_segment *huge;            /* this set's huge segments: under mi->lock */
    struct ng_mi_thread *prev, *next; /* mi->threads, under mi->lock */
    bool abandoning;                /* empty segments stay until the abandon decides */
};

/* The per-interpreter data (interp->ext[index]). */
typedef struct ng_mi_interp {
    ng_raw_mutex lock;
    ng_interp *interp;
    ng_mi_segment *abandoned[NG_MI_HEAP_COUNT]; /* small/medium/large, prev/next links */
    ng_mi_segment *abandoned_huge;  /* huge segments whose heap went away */
    ng_mi_segment *huge_waiting;    /* freed huge object blocks waiting for their goal */
    ng_mi_segment *all;             /* every mapped segment (all_next / all_prev) */
    ng_mi_thread *threads;          /* live heap sets */
    uint64_t pages_abandoned;       /* in-use pages in abandoned[] and abandoned_huge */
    /* Lengths of the lists above, changed under the lock with relaxed atomic stores so that
     * a thread can peek without the lock (a stale answer only skips or retries). */
    uint64_t abandoned_n[NG_MI_HEAP_COUNT], abandoned_huge_n, huge_waiting_n;
    /* Atomics (relaxed: statistics). */
    uint64_t segments, bytes_mapped, segments_hugepage;
    uint64_t segments_abandoned;
    uint64_t mmap_failures;         /* those not attributable to a live heap */
    ng_mi_counters dead;            /* counters of heap sets that went away (under lock) */
    /* Every ng_mi_interp of the process, for the fork hooks (heapset.c's proc_lock). */
    struct ng_mi_interp *proc_prev, *proc_next;
} ng_mi_interp;

/* Adds `d` to a list length (under mi->lock; see ng_mi_interp). */
#define NG_MI_LEN_ADD(field, d) NG_MI_COUNT_ADD(field, d)

/* ---- Small helpers ------------------------------------------------------------------------ */

static inline ng_mi_thread *ng_mi_heap_thread(ng_mi_heap *heap) { return heap->thread; }
static inline ng_mi_heap_data *ng_mi_heap_data_of(ng_mi_heap *heap)
{
    return &heap->thread->data[heap->kind];
}

/* Single-writer counter update: the owner is the only writer, readers load relaxed. */
#define NG_MI_COUNT_ADD(field, delta)                                                     \
    ng_atomic_store(&(field), ng_atomic_load(&(field), NG_RELAXED) + (delta), NG_RELAXED)

static inline ng_mi_block *ng_mi_block_next(const ng_mi_page *page, const ng_mi_block *b)
{
    return *(ng_mi_block *const *)((const char *)b + page->link_offset);
}
static inline void ng_mi_block_set_next(const ng_mi_page *page, ng_mi_block *b, ng_mi_block *n)
{
    *(ng_mi_block **)((char *)b + page->link_offset) = n;
}

static inline ng_mi_segment *ng_mi_page_segment(const ng_mi_page *page)
{
    return ng_mi_segment_of(page);
}

#ifdef NG_MI_DEBUG
/* ---- Debug builds: live-block bookkeeping (the checked free's double-free test) ------------ *
 *
 * Every segment's header has, after its page descriptors, one of these (header_size in
 * segment.c makes room for it only in NG_MI_DEBUG builds, so the public structs and the
 * release layout are unchanged). live[i] is page i's bitmap, one bit per block, set while the
 * block is handed out: calloc'ed when the page is given a size class and freed when it goes
 * back to its segment or the segment is unmapped; it is published and withdrawn under the
 * registry lock, which the checked free holds while it looks at it. huge_live is a huge
 * segment's flag: 1 while its block is handed out.
 *
 * Allocation sets a bit with fetch_or, the checked free clears it with fetch_and before it
 * touches the block: of two frees of one block (on any threads, racing or not) exactly one
 * sees the bit set and goes on; the other returns NG_ESTATE. Relaxed is enough for the bit:
 * it only decides which of the racing frees wins (the RMWs on one word are totally ordered
 * whatever the order argument), and the block itself is handed between threads by the free
 * lists (thread_free's release/acquire CAS, the owner's own program order), which order the
 * allocation's fetch_or before any later free's fetch_and of the same block and the winning
 * free's fetch_and before the reallocation's fetch_or. */
typedef struct ng_mi_debug_seg {
    uint64_t huge_live;
    uint64_t *live[]; /* page_count entries */
} ng_mi_debug_seg;

static inline ng_mi_debug_seg *ng_mi_segment_debug(ng_mi_segment *s)
{
    return (ng_mi_debug_seg *)(void *)&s->pages[s->page_count];
}
/* Sets the live bit of a block just handed out from `page` (aborts if it was set already: an
 * allocator bug, handing out a live block twice). */
void ng_mi_debug_mark_live(ng_mi_page *page, void *p);
#endif

/* ---- os.c ----------------------------------------------------------------------------------- */

/* A mapping of `size` bytes aligned to NG_MI_SEGMENT_SIZE, or NULL (ENOMEM). */
void *ng_mi_os_map(size_t size);
void ng_mi_os_unmap(void *p, size_t size);
/* madvise(MADV_HUGEPAGE): whether the kernel took the advice. `collapse`: the range was
 * touched already, merge its pages into huge ones now (best effort). */
bool ng_mi_os_advise_hugepages(void *p, size_t size, bool collapse);

/* ---- segment.c ------------------------------------------------------------------------------ */

#define NG_MI_SEGMENT_COOKIE UINT64_C(0x6e676d6973656731)

/* A new segment of `seg_kind` for `heap` (huge: room for one block of `huge_size`), linked in
 * the interpreter's list and the registry; small/medium/large ones in the heap's list.
 * NULL with errno ENOMEM on failure. */
ng_mi_segment *ng_mi_segment_alloc(ng_mi_heap *heap, int seg_kind, size_t huge_size);
/* Unmaps a segment (unlinked from every list but the interpreter's, which it leaves). */
void ng_mi_segment_unmap(ng_mi_interp *mi, ng_mi_segment *segment);
/* An empty owned segment: cached (one small one per thread) or unmapped. */
void ng_mi_segment_release_empty(ng_mi_thread *t, ng_mi_segment *segment);
/* A free page for `bin` in `heap` (from owned segments, the cache, or a new segment). */
ng_mi_page *ng_mi_segment_page_alloc(ng_mi_heap *heap, size_t bin);
/* Returns an empty page (not in any queue or FIFO, goal 0) to its segment. */
void ng_mi_segment_page_free(ng_mi_page *page);
void ng_mi_seglist_push(ng_mi_segment **head, ng_mi_segment *s);
void ng_mi_seglist_remove(ng_mi_segment **head, ng_mi_segment *s);
/* The registry of every mapped segment of the process (checked frees). */
bool ng_mi_registry_lock_lookup(const ng_mi_segment *s); /* returns with the lock held */
void ng_mi_registry_unlock(void);
/* fork(3): the before_fork hook takes the registry lock (ng_mi_registry_unlock releases it);
 * the child's reset hook re-initialises it (ng_mi_registry_after_fork). */
void ng_mi_registry_lock_for_fork(void);
void ng_mi_registry_after_fork(void);
#ifdef NG_MI_DEBUG
/* With the registry lock held: whether `p` is the block of one of the last
 * NG_MI_GONE_HUGE_MAX huge segments unmapped after their block was freed (and no segment has
 * been mapped over it since): its free is a double free, not a foreign pointer. */
#define NG_MI_GONE_HUGE_MAX 64
bool ng_mi_registry_gone_huge_locked(const void *p);
#endif

/* ---- page.c -------------------------------------------------------------------------------- */

void ng_mi_pq_push_front(ng_mi_page_queue *q, ng_mi_page *page);
void ng_mi_pq_push_back(ng_mi_page_queue *q, ng_mi_page *page);
void ng_mi_pq_remove(ng_mi_page_queue *q, ng_mi_page *page);
/* The queue a queued page is in. */
ng_mi_page_queue *ng_mi_page_queue_of(ng_mi_page *page);
/* Re-points direct[] of the bin at its first page (or the empty page). */
void ng_mi_heap_update_direct(ng_mi_heap *heap, size_t bin);
extern ng_mi_page ng_mi_empty_page;
/* Initialises a fresh page for `bin` in `heap` and queues it at the front. */
void ng_mi_page_init(ng_mi_heap *heap, ng_mi_page *page, size_t bin, size_t block_size);
/* Carves more blocks into page->free (bounded). */
void ng_mi_page_extend(ng_mi_page *page);
/* Takes the thread_free list into local_free (used decreases); returns the blocks taken. */
uint32_t ng_mi_page_collect_thread_free(ng_mi_page *page);
/* Both collections; local_free moves to free when free is empty. */
void ng_mi_page_collect(ng_mi_page *page);
/* Moves the delayed-free state to `state`, waiting out a transient DELAY_FREEING unless
 * `no_wait` (fork child: the freer is dead). When `only_if` is not ~0, changes only from that
 * state. Returns the previous state. */
uintptr_t ng_mi_page_set_delayed(ng_mi_page *page, uintptr_t state, bool no_wait);
void ng_mi_page_unqueue(ng_mi_page *page);
void ng_mi_page_enqueue(ng_mi_page *page, bool front);
/* Links a page into its bin queue behind the pages in use and before the waiting ones (at
 * most NG_MI_WAITING_WALK of them are stepped over; behind more, at the front). Queue links
 * only: the caller keeps the flags and direct[] right. */
void ng_mi_pq_insert_behind_in_use(ng_mi_page_queue *q, ng_mi_page *page);
/* A full page leaves the full queue for its bin queue (owner). */
void ng_mi_page_unfull(ng_mi_page *page);
/* A page without free blocks moves to the full queue; false (and left in place) when blocks
 * arrived from other threads meanwhile. */
bool ng_mi_page_to_full(ng_mi_page *page);
/* Frees a block into its page as the owner would (used may reach 0: retires). */
void ng_mi_page_local_free(ng_mi_page *page, void *p);

/* ---- qsbr_pages.c -------------------------------------------------------------------------- */

void ng_mi_qsbr_link(ng_mi_thread *t, ng_mi_page *page);
void ng_mi_qsbr_unlink(ng_mi_thread *t, ng_mi_page *page);
/* Defers an empty page of an object heap (goal from the owning state's slot). */
void ng_mi_page_defer(ng_mi_page *page);
/* A waiting page is allocated from again (same size class): goal dropped. */
void ng_mi_page_reuse_waiting(ng_mi_page *page);
/* Releases the deferred pages whose goal is reached, oldest first; `poll` allows a scan,
 * `advance` first advances the write sequence when the oldest goal is past it. Returns the
 * pages released. */
size_t ng_mi_qsbr_collect(ng_mi_thread *t, bool poll, bool advance);
/* Whether the goal of a page (or huge block) is reached, for thread `t` (may be NULL: no
 * slot). */
bool ng_mi_goal_reached(ng_mi_interp *mi, ng_mi_thread *t, uint64_t goal, bool poll);
/* A goal for memory retired now by heap set `t` (NULL: none; fence + next). */
uint64_t ng_mi_goal_now(ng_mi_interp *mi, ng_mi_thread *t, size_t bytes);
/* MEM heaps: frees retired pages whose delay expired (all of them with `all`). */
void ng_mi_heap_collect_retired(ng_mi_heap *heap, bool all);

/* ---- free.c --------------------------------------------------------------------------------- */

/* Drains the heap's delayed-free list (owner). */
void ng_mi_heap_drain_delayed(ng_mi_heap *heap);
/* The free of ng_mi_free without checks (non-debug semantics). */
int ng_mi_free_unchecked(void *p);
/* Whether ng_mi_free_checked(p) on this thread refuses `p` as an object block of the
 * caller's own heap whose state is not attached (its NG_ESTATE that is not a double free).
 * Stable for the calling thread: only it attaches its state. */
bool ng_mi_free_refused_detached(const void *p);
/* Huge segments of object heaps waiting for their goal: unmaps the reached ones. */
void ng_mi_huge_waiting_collect(ng_mi_interp *mi, ng_mi_thread *t, bool poll);

/* ---- abandon.c ----------------------------------------------------------------------------- */

/* Abandons (or unmaps) everything of heap set `t` and frees it. `fork_child`: `t`'s thread is
 * dead (no waiting on transient states). */
void ng_mi_thread_abandon(ng_mi_thread *t, bool fork_child);
/* Reclaims up to `max` abandoned segments of `heap`'s kind (and, with `huge`, its abandoned
 * huge segments). Returns the segments reclaimed. */
size_t ng_mi_reclaim(ng_mi_heap *heap, size_t max, bool huge);

/* ---- heapset.c ----------------------------------------------------------------------------- */

int ng_mi_ext_index(void);
/* The interpreter data, NULL if none was created. */
ng_mi_interp *ng_mi_interp_of(ng_interp *interp);
void ng_mi_interp_lock(ng_mi_interp *mi);
void ng_mi_interp_unlock(ng_mi_interp *mi);
/* Whether the caller may touch heap set `t` (owner, or its world is stopped). */
bool ng_mi_may_access(ng_mi_thread *t);

/* ---- stats.c --------------------------------------------------------------------------------- */

/* Adds the exact gauges of heap `heap` (pages, blocks, segments) to *out. */
void ng_mi_heap_gauges(ng_mi_heap *heap, ng_mi_stats *out);
void ng_mi_counters_add(ng_mi_stats *out, const ng_mi_counters *c);
void ng_mi_refresh_snapshot(ng_mi_heap *heap);

#endif /* NG_MI_ALLOC_INTERNAL_H */
