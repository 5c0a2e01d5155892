/* Allocation: the slow path behind ng_mi_heap_malloc, huge blocks, calloc and realloc. */
#include <errno.h>
#include <string.h>

#include "alloc_internal.h"

static void *page_pop(ng_mi_page *page)
{
    ng_mi_block *b = page->free;
    page->free = ng_mi_block_next(page, b);
    page->used++;
#ifdef NG_MI_DEBUG
    ng_mi_debug_mark_live(page, b);
#endif
    return b;
}

/* The first page of the bin that has (or, collected, gets) a free block. A page found
 * exhausted goes round to the back of the bin once, to the full queue the next time; a
 * waiting page that is picked loses its goal (M3). */
static ng_mi_page *scan_bin(ng_mi_heap *heap, size_t bin)
{
    ng_mi_page_queue *q = &ng_mi_heap_data_of(heap)->bins[bin];
    for (ng_mi_page *page = q->first, *next; page != NULL; page = next) {
        next = page->next;
        ng_mi_page_collect(page);
        if (page->free == NULL)
            ng_mi_page_extend(page);
        if (page->free == NULL && next != NULL && !(page->reserved_flags & NG_MI_PF_ROTATED)) {
            /* Exhausted, with other pages to try: round to the back, behind the pages in use.
             * Blocks freed at random come back to it meanwhile through the owner's inline free
             * (its flags stay 0), and the scan finds them when it comes round. The full queue
             * instead costs a trip through ng_mi_free_generic at the first free and two
             * atomic RMWs of thread_free per round trip (below). Queue links only: direct[]
             * may keep pointing at it (exhausted, of this bin) until a page is picked below.
             * Replace-in-window at 100,000 live blocks, 3 alternating runs: 2.08-2.21x glibc
             * against 1.99-2.07x with the full queue at every exhaustion, and 0.06 full-queue
             * round trips per thousand ops instead of 27. The mark keeps the scan finite and
             * sends a page that is still exhausted when it comes round to the full queue, so
             * a heap of long-lived blocks is not re-walked. */
            page->reserved_flags |= NG_MI_PF_ROTATED;
            ng_mi_pq_remove(q, page);
            ng_mi_pq_insert_behind_in_use(q, page);
            continue;
        }
        if (page->free == NULL) {
            page->reserved_flags &= (uint8_t)~NG_MI_PF_ROTATED;
            /* Exhausted again: parked in the full queue (two atomic RMWs of its thread_free
             * word, USE now and NORMAL when a block comes back), so later scans do not re-walk
             * it. It returns at the back of the bin (ng_mi_page_unfull), so each round trip
             * buys the blocks freed into it meanwhile. */
            if (ng_mi_page_to_full(page))
                continue;
            if (page->free == NULL)
                continue;
        }
        if (page->reserved_flags & NG_MI_PF_QSBR_LINKED)
            ng_mi_page_reuse_waiting(page);
        page->retire_expire = 0;
        page->reserved_flags &= (uint8_t)~NG_MI_PF_ROTATED;
        if (q->first != page) {
            ng_mi_page_unqueue(page);
            ng_mi_page_enqueue(page, true);
        }
        else {
            ng_mi_heap_update_direct(heap, bin);
        }
        return page;
    }
    return NULL;
}

static ng_mi_page *find_page(ng_mi_heap *heap, size_t bin)
{
    ng_mi_page *page = scan_bin(heap, bin);
    if (page != NULL)
        return page;
    /* Pages whose goal is reached go back to their segments (any size class). */
    if (heap->use_qsbr || heap->thread->qsbr_head != NULL)
        ng_mi_qsbr_collect(heap->thread, true, false);
    /* Freed huge object blocks whose goal is reached too (a relaxed peek when none waits):
     * otherwise they stay mapped until the next huge allocation or explicit collection. */
    ng_mi_huge_waiting_collect(heap->thread->mi, heap->thread, true);
    /* Abandoned segments of our kind before new memory. */
    if (ng_mi_reclaim(heap, 1, false) > 0) {
        page = scan_bin(heap, bin);
        if (page != NULL)
            return page;
    }
    return ng_mi_segment_page_alloc(heap, bin);
}

static void *huge_malloc(ng_mi_heap *heap, size_t size)
{
    ng_mi_thread *t = heap->thread;
    /* With a scan: rd_seq moves only when someone scans, and a thread that allocates only
     * huge blocks would otherwise never see the goals of the ones it freed reached (one scan
     * is nothing next to mapping megabytes; none happens while nothing waits). */
    ng_mi_huge_waiting_collect(t->mi, t, true);
    /* Rounding must not wrap: SIZE_MAX - 3 would become 0 and get a tiny block. */
    if (size > SIZE_MAX - 15) {
        errno = ENOMEM;
        return NULL;
    }
    size = (size + 15) & ~(size_t)15;
    ng_mi_segment *s = ng_mi_segment_alloc(heap, NG_MI_SEGMENT_HUGE, size);
    if (s == NULL)
        return NULL;
    ng_mi_page *page = &s->pages[0];
    s->pages_used = 1;
    page->in_use = 1;
    page->block_size = page->area;
    page->bin = NG_MI_BIN_HUGE;
    page->link_offset = heap->prefix;
    page->heap_kind = heap->kind;
    page->flags = NG_MI_PAGE_HUGE;
    page->reserved = page->capacity = page->used = 1;
    ng_atomic_store(&page->heap, heap, NG_RELAXED); /* published by the lock below */
    ng_mi_interp_lock(t->mi);
    ng_mi_seglist_push(&t->huge, s);
    ng_mi_interp_unlock(t->mi);
#ifdef NG_MI_DEBUG
    ng_mi_debug_mark_live(page, page->start);
#endif
    return page->start;
}

void *ng_mi_heap_malloc_generic(ng_mi_heap *heap, size_t size)
{
    if (heap == NULL) {
        errno = ENOMEM;
        return NULL;
    }
#ifdef NG_MI_DEBUG
    /* Only the owner may allocate (alloc.h): another thread would race on the owner-only
     * queues and free lists. */
    if (heap->thread_id != ng_thread_id()) {
        errno = EPERM;
        return NULL;
    }
#endif
    if (size > NG_MI_LARGE_MAX)
        return huge_malloc(heap, size);
    ng_mi_thread *t = heap->thread;
    /* The cheap tests of the two calls below, here: a miss of the inline path is common
     * (every few dozen allocations of a size class whose free list ran dry), these lists are
     * usually empty. Relaxed peek: as in ng_mi_heap_drain_delayed. */
    ng_mi_heap_data *hd = &t->data[heap->kind];
    if (ng_atomic_load(&hd->thread_delayed_free, NG_RELAXED) != 0)
        ng_mi_heap_drain_delayed(heap);
    if (hd->retired_min <= hd->retired_max)
        ng_mi_heap_collect_retired(heap, false);
    size_t bin = size <= NG_MI_DIRECT_MAX ? ng_mi_direct_bin[heap->kind][(size + 7) >> 3]
                                          : ng_mi_heap_bin(heap->kind, size);
    /* The usual miss: the bin's first page ran out of `free` while the owner's frees piled up
     * in local_free (or other threads' in thread_free). Taking them is scan_bin's first step;
     * done here it costs no call, and direct[] already points at the page unless it was
     * reset meanwhile. A waiting page is left to scan_bin (its goal must be dropped). */
    ng_mi_page *page = hd->bins[bin].first;
    if (page != NULL && !(page->reserved_flags & NG_MI_PF_QSBR_LINKED)) {
        /* Relaxed peek: ng_mi_page_collect_thread_free takes the list with an acquire CAS. */
        if ((ng_atomic_load(&page->thread_free, NG_RELAXED) & ~NG_MI_DELAY_MASK) != 0)
            ng_mi_page_collect_thread_free(page);
        if (page->free == NULL) {
            page->free = page->local_free;
            page->local_free = NULL;
        }
        if (page->free != NULL) {
            page->retire_expire = 0;
            page->reserved_flags &= (uint8_t)~NG_MI_PF_ROTATED; /* it serves again */
            if (size <= NG_MI_DIRECT_MAX && heap->direct[(size + 7) >> 3] != page)
                ng_mi_heap_update_direct(heap, bin);
            return page_pop(page);
        }
    }
    page = find_page(heap, bin);
    if (page == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    return page_pop(page);
}

void *ng_mi_heap_calloc(ng_mi_heap *heap, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = ng_mi_heap_malloc(heap, total);
    /* A huge block is always a fresh anonymous mapping (huge_malloc never reuses one), so it
     * is zero already; writing zeros would only make every one of its pages resident. */
    if (p != NULL && total <= NG_MI_LARGE_MAX)
        memset(p, 0, total);
    return p;
}

size_t ng_mi_usable_size(const void *p)
{
    if (p == NULL)
        return 0;
    ng_mi_segment *s = ng_mi_segment_of(p);
    return ng_mi_page_of(s, p)->block_size;
}

void *ng_mi_heap_realloc(ng_mi_heap *heap, void *p, size_t size)
{
    if (p == NULL)
        return ng_mi_heap_malloc(heap, size);
    size_t usable = ng_mi_usable_size(p);
    /* Shrinking by less than half keeps the block. */
    if (size <= usable && size >= usable / 2 && size > 0)
        return p;
    void *q = ng_mi_heap_malloc(heap, size);
    if (q == NULL)
        return NULL; /* p is untouched, as realloc(3) leaves it */
    memcpy(q, p, size < usable ? size : usable);
    (void)ng_mi_free(p);
    return q;
}
