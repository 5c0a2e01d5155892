/* The page allocator (mimalloc_shim/): a mimalloc-style allocator whose object heaps keep an
 * emptied page for its size class until a QSBR goal says no lock-free reader can still hold a
 * pointer into it (CPython's free-threaded mimalloc integration, PEP 703 "page reuse").
 *
 * Memory comes from the kernel in 4 MiB segments (mmap, aligned to their size, so the segment
 * of any block is `p & ~NG_MI_SEGMENT_MASK`). A segment holds pages of one kind: 64 KiB small
 * pages (blocks up to NG_MI_SMALL_MAX), 512 KiB medium pages (up to NG_MI_MEDIUM_MAX), one
 * large page (up to NG_MI_LARGE_MAX); bigger blocks get a huge segment of their own. A page
 * holds blocks of one size class and three free lists: `free` (allocation), `local_free`
 * (frees by the owner thread) and `thread_free` (frees by any other thread: one atomic push).
 *
 * Every thread state has four heaps, as CPython has (spec §6.2): MEM (raw memory), OBJECT,
 * GC and GC_PRE (GC objects with a two-pointer pre-header). In the three object heaps:
 *  - a page that becomes empty gets a QSBR goal (ng_qsbr_goal_for_page on the owning state's
 *    slot, so its bytes count in that slot's deferred-page memory and force an advance past
 *    the threshold) and stays in its heap for blocks of the same size class; it goes back to
 *    the segment (any size class), to another thread or to the kernel only once the goal is
 *    reached;
 *  - the allocator never writes the first `prefix` bytes of a block (NG_MI_OBJECT_PREFIX,
 *    NG_MI_GC_PRE_PREFIX): a free block keeps its list link right after them, so the object
 *    header a racing lock-free reader may still load (ob_tid, flags, ob_ref_local,
 *    ob_ref_shared in CPython's layout) keeps the values the last owner left until the block
 *    is allocated again for the same size class. Blocks there are at least prefix + 8 bytes.
 *
 * Threads: a heap is used by the thread that owns its thread state, while that state is
 * attached (as CPython requires for PyObject_Malloc); ng_mi_free may be called by any thread,
 * with or without a thread state, with one rule for the object heaps (OBJECT, GC, GC_PRE):
 * the thread that owns a block's heap frees it only while that heap's state, or another
 * state of the same interpreter on that thread, is attached (as CPython frees objects). Its free is the unsynchronised local path (page->local_free, used),
 * and a thread that stopped the world may be walking the heap (ng_mi_heap_visit) because a
 * detached state counts as stopped; every other thread's free is one atomic push, which the
 * walker reads with atomics. NG_MI_DEBUG builds refuse such a free (NG_ESTATE, memory
 * untouched, the block stays live) for blocks up to NG_MI_LARGE_MAX; a huge block's free
 * takes the interpreter lock the walker takes, so it is safe anyway. The MEM heap has no such
 * rule (raw memory, freed detached as PyMem_RawFree may be): a walk of another thread's MEM
 * heap is exact only if its owner does not free while detached. When a state goes away (release, thread exit) its heaps are
 * abandoned to the interpreter: segments still holding live blocks or waiting pages go to the
 * interpreter's abandoned pool, from which any thread of that interpreter reclaims them
 * (needing a page, or in ng_mi_heap_collect with force); empty ones go back to the kernel.
 * In the child of fork() the surviving thread adopts the segments of threads that did not
 * survive; fork(3) itself waits (after the thread-state layer has stopped every world) for
 * threads without an attached state that are inside one of the allocator's short critical
 * sections, so the child never sees a list they had half updated. When the interpreter's last reference goes, every segment it still owns is unmapped.
 *
 * Huge pages: blocks picked at random from more memory than the TLB covers with 4 KiB pages
 * (about 6 MiB on current x86 cores) miss it on most accesses; with 2 MiB pages they do not.
 * A huge page is resident as a whole once touched, though. So in the default policy (`auto`)
 * a heap's segments stay on 4 KiB pages until it needs a new small (or medium) segment while
 * it owns a dense one of that kind (blocks carved from three quarters of it or more): then
 * the new segment is advised for transparent huge pages (madvise MADV_HUGEPAGE, Linux; the
 * kernel's `enabled` setting must be `madvise` or `always`), and the dense ones are advised
 * and collapsed into huge pages (MADV_COLLAPSE, Linux 6.1, best effort; two per new segment,
 * each a copy of up to 4 MiB). Sparse segments are left alone. A small heap thus keeps 4 KiB
 * pages and a small resident set. Large and huge segments are not advised in this mode (one
 * block may touch 2 MiB for a few KiB). NOGIL_HUGEPAGES or ng_mi_set_hugepages chooses
 * `auto`, `never`, or `always` (every small, medium and large segment when it is mapped; no
 * collapse). The variable is read once, when the first segment is mapped or
 * ng_mi_get_hugepages is first called: set it before the process starts threads that may
 * call setenv(3). ng_mi_stats.segments_hugepage counts the advised segments.
 *
 * Errors: allocation failure (the kernel refuses a mapping, or the size overflows) returns
 * NULL with errno ENOMEM, never aborts. Compiled with NG_MI_DEBUG defined (the sanitizer
 * builds; Go tag nogil_debug), ng_mi_free checks its argument (ng_mi_free_checked) and returns
 * NG_EINVAL for a pointer this allocator did not hand out and NG_ESTATE for a double free,
 * without touching the memory; without it, such a free is undefined like free(3)'s. The
 * debug check keeps a live bit per block (set by every allocation, cleared atomically by the
 * free before it touches the block), so it finds a double free from any thread, and of two
 * racing frees of one block exactly one returns NG_OK. A block whose page has since gone back
 * to its segment is no longer recognisable: its second free returns NG_EINVAL. A huge block
 * is remembered after its segment is unmapped (a MEM one at once, an object one when its
 * goal is reached): its second free returns NG_ESTATE as long as it is among the last
 * NG_MI_GONE_HUGE_MAX (64) such blocks and nothing was mapped over it since, NG_EINVAL after
 * (a bounded record, never a growing one). A block start never handed out may be reported as
 * NG_ESTATE by a thread other than the page's owner.
 *
 * Interpreter deletion unmaps every segment the interpreter still has, live blocks included
 * (their owners' states are gone). Freeing such a block afterwards is undefined like free(3)
 * after munmap(2) (the release build's ng_mi_free reads the unmapped segment header); the
 * NG_MI_DEBUG checked free looks pointers up in a registry of mapped segments before it reads
 * anything and returns NG_EINVAL, unless the address was mapped again since (then it is
 * judged as a pointer into the new segment: NG_EINVAL or NG_ESTATE, or NG_OK when it is the
 * start of a live block there, which no check can tell from a valid free). In NG_MI_DEBUG builds
 * ng_mi_heap_malloc always takes the out-of-line path, and ng_mi_heap_malloc_generic (so
 * every allocation) returns NULL with errno EPERM when the caller is not the heap's owner
 * thread (heap->thread_id != ng_thread_id()).
 */
#ifndef NOGIL_ALLOC_H
#define NOGIL_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "atomic.h"
#include "status.h"
#include "thread_id.h"
#include "tstate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fast paths below are meant to be inlined into their callers' loops: with the deferred
 * free's push in it, GCC -O2 judged ng_mi_free too big and called an out-of-line copy (with
 * its register saves) from the benchmark's loop. */
#if defined(__GNUC__)
#define NG_MI_FAST_PATH static inline __attribute__((always_inline))
#else
#define NG_MI_FAST_PATH static inline
#endif

/* ---- Geometry ------------------------------------------------------------------------ */

#define NG_MI_SEGMENT_SHIFT 22
#define NG_MI_SEGMENT_SIZE ((size_t)1 << NG_MI_SEGMENT_SHIFT)  /* 4 MiB */
#define NG_MI_SEGMENT_MASK (NG_MI_SEGMENT_SIZE - 1)
#define NG_MI_SMALL_PAGE_SHIFT 16                              /* 64 KiB */
#define NG_MI_MEDIUM_PAGE_SHIFT 19                             /* 512 KiB */
#define NG_MI_SMALL_MAX ((size_t)16 * 1024)      /* largest block on a small page */
#define NG_MI_MEDIUM_MAX ((size_t)128 * 1024)    /* largest block on a medium page */
#define NG_MI_LARGE_MAX ((size_t)2 * 1024 * 1024) /* larger blocks get a huge segment */
/* Sizes up to this are served by the inline fast path (heap->direct). */
#define NG_MI_DIRECT_MAX ((size_t)1024)
#define NG_MI_DIRECT_WSIZE (NG_MI_DIRECT_MAX / 8)

/* Bytes at the start of a block of the object heaps that the allocator never writes:
 * offsetof(PyObject, ob_type) in CPython's free-threaded LP64 layout, plus the two-pointer
 * GC pre-header for GC_PRE. */
#define NG_MI_OBJECT_PREFIX 24
#define NG_MI_GC_PRE_PREFIX (NG_MI_OBJECT_PREFIX + 16)

typedef enum ng_mi_heap_kind {
    NG_MI_HEAP_MEM = 0,    /* raw memory; no QSBR gating; prefix 0 */
    NG_MI_HEAP_OBJECT = 1, /* plain objects */
    NG_MI_HEAP_GC = 2,     /* GC objects */
    NG_MI_HEAP_GC_PRE = 3, /* GC objects with a pre-header */
    NG_MI_HEAP_COUNT = 4,
} ng_mi_heap_kind;

enum ng_mi_segment_kind {
    NG_MI_SEGMENT_SMALL = 0,
    NG_MI_SEGMENT_MEDIUM = 1,
    NG_MI_SEGMENT_LARGE = 2,
    NG_MI_SEGMENT_HUGE = 3,
};

/* ng_mi_page.flags: any bit set sends ng_mi_free to the out-of-line path. */
enum ng_mi_page_flags {
    NG_MI_PAGE_IN_FULL = 1u << 0, /* in its heap's full queue: frees must notify the heap */
    NG_MI_PAGE_HUGE = 1u << 1,    /* the only page of a huge segment */
};

/* The segment's thread_id while it has no owner: neither an id ng_thread_id() hands out nor
 * 0, the id of a thread that has not asked for one yet, so the inline free can compare with
 * the thread-local word without first making sure it is assigned. */
#define NG_MI_NO_THREAD UINT64_MAX

typedef struct ng_mi_block ng_mi_block; /* a free block; its link is at page->link_offset */
typedef struct ng_mi_heap ng_mi_heap;
typedef struct ng_mi_thread ng_mi_thread; /* a thread state's four heaps (private) */

/* A page descriptor; it lives in its segment's header, never inside the page. The fields up
 * to `flags` are the fast path's (the inline functions below and the Go wrapper, checked by
 * a layout test); the rest belongs to mimalloc_shim/. */
typedef struct ng_mi_page {
    ng_mi_block *free;          /* owner only: blocks ready to hand out */
    ng_mi_block *local_free;    /* owner only: blocks the owner freed since the last collect */
    uint32_t used;              /* owner only: blocks handed out and not collected back */
    uint16_t link_offset;       /* where a free block keeps its next pointer (heap prefix) */
    uint8_t flags;              /* ng_mi_page_flags; owner only */
    uint8_t heap_kind;          /* ng_mi_heap_kind of the heap it serves (its tag) */
    size_t block_size;          /* 0 while the page is not in use */
    /* Frees by other threads: a block list, with a two-bit state in the low bits
     * (mimalloc_shim/ documents it). Atomic. */
    uintptr_t thread_free;
    /* ---- mimalloc_shim/ private from here on ---- */
    ng_mi_heap *heap;           /* atomic: owning heap; NULL while abandoned */
    struct ng_mi_page *prev, *next;           /* heap queue or segment free list */
    struct ng_mi_page *qsbr_prev, *qsbr_next; /* the owning thread's deferred-page list */
    uint64_t qsbr_goal;         /* 0: no goal (not deferred) */
    uint8_t *start;             /* first block */
    size_t area;                /* bytes usable for blocks */
    uint32_t capacity;          /* blocks carved so far (free lists are built lazily) */
    uint32_t reserved;          /* blocks that fit */
    uint8_t in_use;             /* assigned to a size class */
    uint8_t retire_expire;      /* retire delay of the last empty page of a size class */
    uint8_t bin;                /* size class */
    uint8_t reserved_flags;
    uint64_t reserved2;         /* pads to 128 bytes */
} ng_mi_page;

/* A power of two, so that ng_mi_page_of indexes with a shift: replace-in-window at 100,000
 * live blocks measured 1.96x glibc at 120 bytes, 2.01-2.03x at 128 (with the free's raw
 * thread-id compare below; 3 alternating runs, 2 threads). */
_Static_assert(sizeof(ng_mi_page) == 128, "ng_mi_page: 128 bytes");

/* The head of every segment. The page descriptors follow it (page index =
 * (p - segment) >> page_shift; huge segments use shift 63, so every address maps to page 0). */
typedef struct ng_mi_segment {
    uint64_t thread_id;         /* atomic: the owner's ng_thread_id(); NG_MI_NO_THREAD while
                                 * abandoned */
    uint32_t page_shift;
    uint8_t kind;               /* ng_mi_segment_kind */
    uint8_t heap_kind;          /* a segment serves one heap kind (reclaim routing) */
    uint16_t reserved0;
    /* ---- mimalloc_shim/ private from here on ---- */
    size_t size;                /* bytes mapped (NG_MI_SEGMENT_SIZE, more for huge) */
    uint32_t page_count, pages_used;
    ng_mi_thread *owner;        /* NULL while abandoned */
    struct ng_mi_segment *prev, *next;  /* owner's segment lists / the abandoned pool */
    struct ng_mi_segment *all_next;     /* the interpreter's list of every segment */
    uint64_t cookie;            /* NG_MI_SEGMENT_COOKIE ^ address: foreign-pointer checks */
    struct ng_mi_segment *all_prev;     /* the interpreter's list of every segment */
    struct ng_mi_interp *mi;            /* the interpreter data it belongs to */
    uint8_t hugepages;                  /* advised for transparent huge pages */
    ng_mi_page pages[];
} ng_mi_segment;

/* A heap. `direct` comes first so the fast path indexes it from the heap pointer. */
struct ng_mi_heap {
    /* By word size ((size + 7) / 8): a page of the right size class that may have free
     * blocks, or a shared empty page (free == NULL), never NULL. Owner only. */
    ng_mi_page *direct[NG_MI_DIRECT_WSIZE + 1];
    uint64_t thread_id;         /* the owner's ng_thread_id() */
    ng_mi_thread *thread;
    ng_tstate *tstate;
    uint8_t kind;               /* ng_mi_heap_kind */
    uint8_t use_qsbr;           /* the three object heaps */
    uint16_t prefix;            /* bytes of a block the allocator never writes */
    /* ---- mimalloc_shim/ private from here on (size classes, queues, counters) ---- */
    void *priv;
};

static inline ng_mi_segment *ng_mi_segment_of(const void *p)
{
    return (ng_mi_segment *)((uintptr_t)p & ~(uintptr_t)NG_MI_SEGMENT_MASK);
}

static inline ng_mi_page *ng_mi_page_of(ng_mi_segment *segment, const void *p)
{
    size_t index = (size_t)(((uintptr_t)p - (uintptr_t)segment) >> segment->page_shift);
    return &segment->pages[index];
}

/* ---- Heaps ------------------------------------------------------------------------------ */

/* The heap of kind `kind` of thread state `ts`, created with the other three on first use.
 * `ts` must be the calling thread's. NG_OK, NG_EWRONGTHREAD, NG_ERELEASED, NG_EINVAL (bad
 * kind or NULL), NG_ENOMEM. The pointer is valid until the state is released. */
int ng_mi_heap_of(ng_tstate *ts, ng_mi_heap_kind kind, ng_mi_heap **out);

/* Which segments are advised for transparent huge pages (header comment). */
typedef enum ng_mi_hugepages {
    NG_MI_HUGEPAGES_NEVER = 0,
    NG_MI_HUGEPAGES_AUTO = 1,   /* small and medium segments of heaps with a dense one */
    NG_MI_HUGEPAGES_ALWAYS = 2, /* every small, medium and large segment */
} ng_mi_hugepages;

/* Sets the policy for segments mapped from now on, in every interpreter (segments keep the
 * advice they got). NG_OK, or NG_EINVAL for a value not in ng_mi_hugepages. */
int ng_mi_set_hugepages(ng_mi_hugepages mode);
/* The policy in effect: NOGIL_HUGEPAGES (`never`, `auto`, `always`; anything else, or
 * unset, is `auto`) until ng_mi_set_hugepages changes it. */
ng_mi_hugepages ng_mi_get_hugepages(void);

/* ---- Allocation (owner thread) ---------------------------------------------------------- */

/* Any size, and the inline path's misses. NULL with errno ENOMEM on failure (NG_MI_DEBUG
 * builds: NULL with errno EPERM when the caller is not the heap's owner thread). Size 0
 * returns a unique block of the smallest class. */
void *ng_mi_heap_malloc_generic(ng_mi_heap *heap, size_t size);

NG_MI_FAST_PATH void *ng_mi_heap_malloc(ng_mi_heap *heap, size_t size)
{
#ifdef NG_MI_DEBUG
    /* Debug builds keep a live bit per block (the checked free's double-free test), which
     * only the out-of-line path sets. */
    return ng_mi_heap_malloc_generic(heap, size);
#else
    if (size <= NG_MI_DIRECT_MAX) {
        ng_mi_page *page = heap->direct[(size + 7) >> 3];
        ng_mi_block *block = page->free;
        if (block != NULL) {
            ng_mi_block *next = *(ng_mi_block **)((char *)block + page->link_offset);
            page->free = next;
            page->used++;
            /* The next block this size class hands out: its link is read by the next
             * allocation and its first bytes written by the caller (an object header). Freed
             * long ago, it is usually a cache miss at a large working set, and a class is
             * allocated from again only some ops later, so the miss overlaps other work.
             * Write intent; NULL (an emptied list) is a harmless prefetch. Replace-in-window
             * at 100,000 live blocks, 5 runs of 20 paired rounds each: median 0.88x -> 0.96x
             * libmimalloc at 1 thread, 0.90x -> 0.92x at 2; at 1,024 no change. */
            __builtin_prefetch(next, 1, 3);
            return block;
        }
    }
    return ng_mi_heap_malloc_generic(heap, size);
#endif
}

/* Zeroed; NULL (ENOMEM) when n * size overflows. */
void *ng_mi_heap_calloc(ng_mi_heap *heap, size_t n, size_t size);
/* realloc(3) semantics on this heap; p may belong to any heap of any thread. */
void *ng_mi_heap_realloc(ng_mi_heap *heap, void *p, size_t size);
/* The usable size of a block (its size class), 0 for NULL. */
size_t ng_mi_usable_size(const void *p);

/* ---- Free (any thread) ----------------------------------------------------------------- */

/* Out-of-line parts of ng_mi_free (not for direct use): another thread's block, a page in
 * the full queue, a huge block; and the page that has just become empty. */
int ng_mi_free_generic(ng_mi_segment *segment, ng_mi_page *page, void *p);
void ng_mi_page_retire(ng_mi_page *page);

/* Frees with every check: NG_OK, NG_EINVAL (not a block start this allocator handed out, or
 * its segment was unmapped), NG_ESTATE (the block is already free, or it is an object-heap
 * block of the caller's own heap while no state of the caller in that heap's interpreter is
 * attached; see the header comment). The
 * memory is not touched on error. */
int ng_mi_free_checked(void *p);

/* Frees a block of any heap from any thread. NULL is ignored. NG_OK (see the header comment
 * for NG_MI_DEBUG builds). */
NG_MI_FAST_PATH int ng_mi_free(void *p)
{
#ifdef NG_MI_DEBUG
    return ng_mi_free_checked(p);
#else
    if (p == NULL)
        return NG_OK;
    ng_mi_segment *segment = ng_mi_segment_of(p);
    /* Relaxed: only the owner stores its own id there (and only it replaces it, when it
     * abandons the segment; in a fork child the survivor replaces dead threads' ids, alone
     * in the process), so reading our id means we are the owner; any other value,
     * however stale, takes the out-of-line path, which is right for every owner. A thread
     * whose id is not assigned yet reads 0 here, which no segment holds (NG_MI_NO_THREAD):
     * it owns nothing, and goes out of line too. */
    if (ng_atomic_load(&segment->thread_id, NG_RELAXED) == ng_thread_id_cached) {
        ng_mi_page *page = ng_mi_page_of(segment, p);
        if (page->flags == 0) {
            *(ng_mi_block **)((char *)p + page->link_offset) = page->local_free;
            page->local_free = (ng_mi_block *)p;
            if (--page->used == 0)
                ng_mi_page_retire(page);
            return NG_OK;
        }
        return ng_mi_free_generic(segment, page, p);
    }
    ng_mi_page *page = ng_mi_page_of(segment, p);
    return ng_mi_free_generic(segment, page, p);
#endif
}

/* ---- Collection, walking, statistics ------------------------------------------------------- */

/* Owner thread: takes back other threads' frees, returns pages whose goal is reached and
 * empty segments; with `force`, also reclaims every segment in the interpreter's abandoned
 * pool whose heap kind matches (their waiting pages keep their goals). NG_OK, NG_EWRONGTHREAD. */
int ng_mi_heap_collect(ng_mi_heap *heap, bool force);

/* Called for every live block; return false to stop the walk. */
typedef bool ng_mi_visit_fn(void *block, size_t block_size, void *arg);

/* Visits every live block of `heap` (other threads' frees not yet collected count as live
 * unless the caller is the owner, who collects first). The owner may call it; any other
 * thread only while it is the one that stopped the world of the heap's interpreter
 * (NG_EWRONGTHREAD otherwise, also while another thread holds the world stopped: that
 * thread may be walking or restarting). Other threads' frees meanwhile are read with
 * atomics; the owner must not free into an object heap while detached (header comment). The
 * callback must not allocate from or free into this heap. NG_OK, NG_EWRONGTHREAD, NG_EINVAL. */
int ng_mi_heap_visit(ng_mi_heap *heap, ng_mi_visit_fn *fn, void *arg);
/* Visits the live blocks of kind `kind` in the interpreter's abandoned pool. The caller must
 * be the thread that stopped the world of `interp` (ng_stop_the_world): NG_ESTATE otherwise,
 * also while another thread holds it stopped. */
int ng_mi_abandoned_visit(ng_interp *interp, ng_mi_heap_kind kind, ng_mi_visit_fn *fn,
                          void *arg);

typedef struct ng_mi_stats {
    uint64_t blocks_in_use;        /* handed out and not freed (others' frees once collected) */
    uint64_t bytes_in_use;         /* the same in block-size bytes */
    uint64_t pages_in_use;         /* pages with at least one live block */
    uint64_t pages_waiting;        /* empty pages waiting for their QSBR goal */
    uint64_t bytes_waiting;        /* their size in bytes */
    uint64_t pages_free;           /* empty pages in segments, usable by any size class */
    uint64_t pages_abandoned;      /* pages in the abandoned pool (interpreter stats only) */
    uint64_t segments;             /* mapped segments, huge ones included */
    uint64_t bytes_mapped;
    uint64_t segments_hugepage;    /* mapped segments advised for transparent huge pages */
    uint64_t huge_blocks;
    /* Counters since creation. */
    uint64_t pages_deferred;       /* pages that started waiting for a goal */
    uint64_t pages_released_after_goal; /* waiting pages returned once their goal was reached */
    uint64_t pages_reused_same_class;   /* waiting pages allocated from again (goal dropped) */
    uint64_t segments_abandoned, segments_reclaimed;
    uint64_t mmap_failures;
} ng_mi_stats;

/* One heap (owner thread, or any thread while the world is stopped: NG_EWRONGTHREAD
 * otherwise). */
int ng_mi_heap_get_stats(ng_mi_heap *heap, ng_mi_stats *out);
/* Every heap and the abandoned pool of `interp`. Exact while the world is stopped; otherwise
 * other threads' counters are read as they are (relaxed). NG_OK, NG_ERELEASED, NG_EINVAL. */
int ng_mi_interp_get_stats(ng_interp *interp, ng_mi_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_ALLOC_H */
