/* Pages: heap queues, lazily built free lists, collection of other threads' frees and the
 * delayed-free state machine.
 *
 * The delayed-free state lives in the two low bits of page->thread_free (blocks are at least
 * 8-byte aligned, so the bits are free), next to the list of blocks other threads freed:
 *
 *   NORMAL  a foreign free pushes its block onto the page's list with one CAS.
 *   USE     the owner moved the page to its full queue, where it never looks for free
 *           blocks. The next foreign free must tell the owner: it CASes the state to FREEING
 *           (without pushing its block), pushes the block onto its heap's thread_delayed_free
 *           list instead, and CASes the state back to NORMAL. The owner drains that list in its
 *           slow path, which frees the block locally and so moves the page out of the full
 *           queue; later foreign frees go to the page list again.
 *   FREEING transient, while a freer holds the page's heap pointer. Every other party waits
 *           until it ends: other freers (so a single notification is in flight) and the owner
 *           before it changes the state (so it never frees or hands away the heap the freer is
 *           about to push onto).
 *   NEVER   the page is abandoned (no heap): frees always push onto the page; the reclaimer
 *           collects them and sets NORMAL when it adopts the page.
 *
 * Transitions: owner NORMAL->USE (to full queue), owner USE->NORMAL (back out), freer
 * USE->FREEING->NORMAL, abandon any->NEVER (waiting out FREEING), reclaim NEVER->NORMAL. */
#include <sched.h>

#include "alloc_internal.h"

/* The target of direct[] entries without a usable page: free is NULL, so the inline path
 * always falls through to the slow path and never writes it. */
ng_mi_page ng_mi_empty_page;

/* ---- Queues ------------------------------------------------------------------------------- */

void ng_mi_pq_push_front(ng_mi_page_queue *q, ng_mi_page *page)
{
    page->prev = NULL;
    page->next = q->first;
    if (q->first != NULL)
        q->first->prev = page;
    else
        q->last = page;
    q->first = page;
}

void ng_mi_pq_push_back(ng_mi_page_queue *q, ng_mi_page *page)
{
    page->next = NULL;
    page->prev = q->last;
    if (q->last != NULL)
        q->last->next = page;
    else
        q->first = page;
    q->last = page;
}

void ng_mi_pq_remove(ng_mi_page_queue *q, ng_mi_page *page)
{
    if (page->prev != NULL)
        page->prev->next = page->next;
    else
        q->first = page->next;
    if (page->next != NULL)
        page->next->prev = page->prev;
    else
        q->last = page->prev;
    page->prev = page->next = NULL;
}

static ng_mi_heap *owner_heap(const ng_mi_page *page)
{
    /* Relaxed: only the owner (or a thread acting for it) calls this, and it wrote it. */
    return ng_atomic_load(&((ng_mi_page *)page)->heap, NG_RELAXED);
}

ng_mi_page_queue *ng_mi_page_queue_of(ng_mi_page *page)
{
    ng_mi_heap_data *hd = ng_mi_heap_data_of(owner_heap(page));
    return (page->flags & NG_MI_PAGE_IN_FULL) ? &hd->full : &hd->bins[page->bin];
}

void ng_mi_heap_update_direct(ng_mi_heap *heap, size_t bin)
{
    if (bin >= NG_MI_BIN_COUNT)
        return;
    size_t lo = ng_mi_direct_lo[heap->kind][bin], hi = ng_mi_direct_hi[heap->kind][bin];
    if (lo > hi)
        return;
    ng_mi_page *first = ng_mi_heap_data_of(heap)->bins[bin].first;
    /* A page waiting for its goal must not be reachable from the inline path (M3: only the
     * slow path may allocate from it, dropping the goal). */
    ng_mi_page *target = (first != NULL && first->qsbr_goal == 0) ? first : &ng_mi_empty_page;
    /* The entries of a bin are only ever written together (here), so one tells for all. */
    if (heap->direct[lo] == target)
        return;
    for (size_t w = lo; w <= hi; w++)
        heap->direct[w] = target;
}

/* Takes a queued page out of its queue. */
void ng_mi_page_unqueue(ng_mi_page *page)
{
    if (!(page->reserved_flags & NG_MI_PF_QUEUED))
        return;
    ng_mi_heap *heap = owner_heap(page);
    ng_mi_pq_remove(ng_mi_page_queue_of(page), page);
    page->reserved_flags &= (uint8_t)~NG_MI_PF_QUEUED;
    if (!(page->flags & NG_MI_PAGE_IN_FULL))
        ng_mi_heap_update_direct(heap, page->bin);
    page->flags &= (uint8_t)~NG_MI_PAGE_IN_FULL;
}

/* Queues a page in its bin queue (front: it has blocks to hand out; back: it waits). */
void ng_mi_page_enqueue(ng_mi_page *page, bool front)
{
    ng_mi_heap *heap = owner_heap(page);
    ng_mi_page_queue *q = &ng_mi_heap_data_of(heap)->bins[page->bin];
    if (front)
        ng_mi_pq_push_front(q, page);
    else
        ng_mi_pq_push_back(q, page);
    page->reserved_flags |= NG_MI_PF_QUEUED;
    ng_mi_heap_update_direct(heap, page->bin);
}

/* ---- Free lists ------------------------------------------------------------------------------ */

void ng_mi_page_init(ng_mi_heap *heap, ng_mi_page *page, size_t bin, size_t block_size)
{
    page->block_size = block_size;
    page->bin = (uint8_t)bin;
    page->link_offset = heap->prefix;
    page->heap_kind = heap->kind;
    page->flags = 0;
    page->free = page->local_free = NULL;
    page->used = 0;
    page->capacity = 0;
    page->reserved = (uint32_t)(page->area / block_size);
    page->qsbr_goal = 0;
    page->retire_expire = 0;
    page->reserved_flags = 0;
    /* Relaxed: no block of the page was handed out yet, so no other thread looks at these
     * until it gets one through its own synchronisation with us. */
    ng_atomic_store(&page->thread_free, NG_MI_DELAY_NORMAL, NG_RELAXED);
    ng_atomic_store(&page->heap, heap, NG_RELAXED);
    ng_mi_page_extend(page);
    ng_mi_page_enqueue(page, true);
}

void ng_mi_page_extend(ng_mi_page *page)
{
    if (page->capacity >= page->reserved)
        return;
    /* A few KiB at a time: a page used for a handful of blocks never touches (and so never
     * faults in) the rest of its memory. */
    size_t n = 8192 / page->block_size;
    if (n < 4)
        n = 4;
    if (n > page->reserved - page->capacity)
        n = page->reserved - page->capacity;
    uint8_t *first = page->start + (size_t)page->capacity * page->block_size;
    for (size_t i = 0; i + 1 < n; i++)
        ng_mi_block_set_next(page, (ng_mi_block *)(first + i * page->block_size),
                             (ng_mi_block *)(first + (i + 1) * page->block_size));
    ng_mi_block_set_next(page, (ng_mi_block *)(first + (n - 1) * page->block_size), page->free);
    page->free = (ng_mi_block *)first;
    page->capacity += (uint32_t)n;
}

uint32_t ng_mi_page_collect_thread_free(ng_mi_page *page)
{
    /* Relaxed first load: the CAS below re-reads it. */
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_RELAXED);
    do {
        if ((tf & ~NG_MI_DELAY_MASK) == 0)
            return 0;
        /* Acquire: pairs with the freers' release CAS, so the links they wrote into the
         * blocks (and the frees' effects) are visible before we walk the list. The state bits
         * stay as they are. */
    } while (!ng_atomic_cas(&page->thread_free, &tf, tf & NG_MI_DELAY_MASK, NG_ACQUIRE,
                            NG_RELAXED));
    ng_mi_block *head = (ng_mi_block *)(tf & ~NG_MI_DELAY_MASK), *tail = head;
    uint32_t n = 1;
    for (ng_mi_block *next; (next = ng_mi_block_next(page, tail)) != NULL; tail = next)
        n++;
    ng_mi_block_set_next(page, tail, page->local_free);
    page->local_free = head;
    page->used -= n;
    return n;
}

void ng_mi_page_collect(ng_mi_page *page)
{
    ng_mi_page_collect_thread_free(page);
    if (page->free == NULL && page->local_free != NULL) {
        page->free = page->local_free;
        page->local_free = NULL;
    }
}

/* ---- Delayed-free state ------------------------------------------------------------------------ */

uintptr_t ng_mi_page_set_delayed(ng_mi_page *page, uintptr_t state, bool no_wait)
{
    /* Acquire loads: seeing a freer's FREEING->NORMAL (a release CAS) makes its push onto
     * the heap's delayed list visible to us. */
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
    for (;;) {
        uintptr_t cur = tf & NG_MI_DELAY_MASK;
        if (cur == NG_MI_DELAY_FREEING && !no_wait) {
            sched_yield();
            tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
            continue;
        }
        if (cur == state)
            return cur;
        /* Acq-rel: release publishes page->heap (and the queues' state) to a freer that sees
         * USE; acquire as for the loads above. */
        if (ng_atomic_cas(&page->thread_free, &tf, (tf & ~NG_MI_DELAY_MASK) | state,
                          NG_ACQ_REL, NG_ACQUIRE))
            return cur;
    }
}

/* USE -> NORMAL only: an abandoning owner's NEVER stays. */
static void clear_use_delayed(ng_mi_page *page)
{
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
    for (;;) {
        uintptr_t cur = tf & NG_MI_DELAY_MASK;
        if (cur == NG_MI_DELAY_FREEING) {
            sched_yield();
            tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
            continue;
        }
        if (cur != NG_MI_DELAY_USE)
            return;
        /* Acquire on both outcomes: as in ng_mi_page_set_delayed. */
        if (ng_atomic_cas(&page->thread_free, &tf, (tf & ~NG_MI_DELAY_MASK) | NG_MI_DELAY_NORMAL,
                          NG_ACQ_REL, NG_ACQUIRE))
            return;
    }
}

/* Waiting pages a page steps over to be queued in front of them (see below). */
#define NG_MI_WAITING_WALK 8

/* A page that may get blocks back (one leaving the full queue, or one the scan found
 * exhausted and sends round once) goes behind the pages of its bin that have blocks to hand
 * out, as mimalloc queues a page leaving the full queue (mi_page_queue_enqueue_from_full).
 * At the front it became the direct[] page with a single block: with blocks freed at random
 * (a window of live objects) every other allocation took the slow path, and pages cycled
 * between the full queue and the front of their bin at every free, two atomic RMWs each; by
 * the time a page comes round from the back it has gathered many frees. Measured at 100,000
 * live blocks of 16..256 bytes replaced at random: 0.53 slow-path allocations and 0.29
 * full-queue round trips per op before, 0.06 and 0.04 after; the slow-path work kept the
 * core from overlapping the cache misses of successive ops: ~4x slower than mimalloc
 * before, on par after.
 * Waiting pages (QSBR goal) sit at the back of the queue so that a scan takes a page in use
 * before it drops a goal: the page goes in front of them. A long run of waiting pages (more
 * than NG_MI_WAITING_WALK) is not walked: the page goes to the front. */
void ng_mi_pq_insert_behind_in_use(ng_mi_page_queue *q, ng_mi_page *page)
{
    ng_mi_page *after = q->last;
    for (int n = 0; after != NULL && (after->reserved_flags & NG_MI_PF_QSBR_LINKED); n++) {
        if (n == NG_MI_WAITING_WALK) {
            ng_mi_pq_push_front(q, page);
            return;
        }
        after = after->prev;
    }
    if (after == NULL) {
        ng_mi_pq_push_front(q, page);
        return;
    }
    page->prev = after;
    page->next = after->next;
    if (after->next != NULL)
        after->next->prev = page;
    else
        q->last = page;
    after->next = page;
}

void ng_mi_page_unfull(ng_mi_page *page)
{
    if (!(page->flags & NG_MI_PAGE_IN_FULL))
        return;
    clear_use_delayed(page);
    ng_mi_page_unqueue(page);
    ng_mi_heap *heap = owner_heap(page);
    ng_mi_pq_insert_behind_in_use(&ng_mi_heap_data_of(heap)->bins[page->bin], page);
    page->reserved_flags |= NG_MI_PF_QUEUED;
    ng_mi_heap_update_direct(heap, page->bin);
}

bool ng_mi_page_to_full(ng_mi_page *page)
{
    /* The state first, then one more collection: a free that came before the state change is
     * in thread_free now, one that comes after notifies the heap. Either way we learn of it. */
    if (ng_mi_page_set_delayed(page, NG_MI_DELAY_USE, false) == NG_MI_DELAY_NEVER) {
        ng_mi_page_set_delayed(page, NG_MI_DELAY_NEVER, false);
        return false;
    }
    ng_mi_page_collect(page);
    if (page->free != NULL) {
        clear_use_delayed(page);
        return false;
    }
    ng_mi_heap *heap = owner_heap(page);
    ng_mi_page_unqueue(page);
    ng_mi_pq_push_back(&ng_mi_heap_data_of(heap)->full, page);
    page->flags |= NG_MI_PAGE_IN_FULL;
    page->reserved_flags |= NG_MI_PF_QUEUED;
    return true;
}

void ng_mi_page_local_free(ng_mi_page *page, void *p)
{
    if (page->flags & NG_MI_PAGE_IN_FULL)
        ng_mi_page_unfull(page);
    ng_mi_block_set_next(page, (ng_mi_block *)p, page->local_free);
    page->local_free = (ng_mi_block *)p;
    if (--page->used == 0)
        ng_mi_page_retire(page);
}
