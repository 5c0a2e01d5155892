/* Frees that leave the inline path: full pages, huge blocks, other threads' blocks, the
 * heap's delayed-free list, and the checked free of debug builds.
 *
 * The checked free (NG_MI_DEBUG) finds a double free on any thread, racing or not: it clears
 * the block's live bit (a huge segment's live flag) with one atomic read-modify-write before
 * it touches the block, and only the free that cleared it goes on (alloc_internal.h). A
 * block of a page that has since gone back to its segment is no longer recognisable and gets
 * NG_EINVAL; a freed huge block whose segment is unmapped is remembered for a while (the
 * registry's gone_huge ring, segment.c) and gets NG_ESTATE. */
#include <sched.h>

#include "alloc_internal.h"

/* Another thread's block: one push onto the page's list, or, for a full page, a notification
 * of its heap (the state machine is in page.c). */
static void foreign_free(ng_mi_page *page, void *p)
{
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_RELAXED);
    bool notify;
    for (;;) {
        uintptr_t st = tf & NG_MI_DELAY_MASK;
        if (st == NG_MI_DELAY_FREEING) { /* another freer is notifying: wait for it */
            sched_yield();
            tf = ng_atomic_load(&page->thread_free, NG_RELAXED);
            continue;
        }
        notify = st == NG_MI_DELAY_USE;
        uintptr_t desired;
        if (notify) {
            desired = (tf & ~NG_MI_DELAY_MASK) | NG_MI_DELAY_FREEING;
        }
        else {
            ng_mi_block_set_next(page, (ng_mi_block *)p, (ng_mi_block *)(tf & ~NG_MI_DELAY_MASK));
            desired = (uintptr_t)p | st;
        }
        /* Release: the collector's acquire then sees the link and everything this thread did
         * with the block. Acquire: after USE -> FREEING we read page->heap, which the owner
         * published with its release CAS to USE. */
        if (ng_atomic_cas(&page->thread_free, &tf, desired, NG_ACQ_REL, NG_RELAXED))
            break;
    }
    if (!notify)
        return;
    /* FREEING keeps the heap alive: its owner waits for the state to change before it
     * abandons or changes the page. Acquire: pairs with the owner's release store of it. */
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_ACQUIRE);
    ng_mi_heap_data *hd = &heap->thread->data[heap->kind];
    uintptr_t head = ng_atomic_load(&hd->thread_delayed_free, NG_RELAXED);
    do {
        ng_mi_block_set_next(page, (ng_mi_block *)p, (ng_mi_block *)head);
        /* Release: the owner's acquire exchange sees the link and the block's last uses. */
    } while (!ng_atomic_cas(&hd->thread_delayed_free, &head, (uintptr_t)p, NG_RELEASE,
                            NG_RELAXED));
    tf = ng_atomic_load(&page->thread_free, NG_RELAXED);
    /* Release: whoever waits for FREEING to end (the owner) sees our push onto its list. */
    while (!ng_atomic_cas(&page->thread_free, &tf,
                          (tf & ~NG_MI_DELAY_MASK) | NG_MI_DELAY_NORMAL, NG_RELEASE, NG_RELAXED))
        ;
}

void ng_mi_heap_drain_delayed(ng_mi_heap *heap)
{
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    /* Relaxed peek: the common case is an empty list. */
    if (ng_atomic_load(&hd->thread_delayed_free, NG_RELAXED) == 0)
        return;
    /* Acquire: pairs with the freers' release CAS (links and block contents). */
    uintptr_t list = ng_atomic_exchange(&hd->thread_delayed_free, 0, NG_ACQUIRE);
    while (list != 0) {
        void *b = (void *)list;
        ng_mi_page *page = ng_mi_page_of(ng_mi_segment_of(b), b);
        list = (uintptr_t)ng_mi_block_next(page, b);
        ng_mi_page_local_free(page, b);
    }
}

/* Any thread. The segment is unmapped, or (object heaps: lock-free readers may still look at
 * the block's header) parked until a QSBR goal is reached. */
static void huge_free(ng_mi_segment *s)
{
    ng_mi_interp *mi = s->mi;
    ng_mi_page *page = &s->pages[0];
    ng_mi_interp_lock(mi);
    if (s->owner != NULL) {
        ng_mi_seglist_remove(&s->owner->huge, s);
    }
    else {
        ng_mi_seglist_remove(&mi->abandoned_huge, s);
        NG_MI_LEN_ADD(mi->abandoned_huge_n, -1);
        mi->pages_abandoned--;
    }
    bool gated = s->heap_kind != NG_MI_HEAP_MEM;
    if (gated) {
        /* A huge block is megabytes: its goal is an advance (a seq-cst RMW, ordered after
         * the caller's free), as a page of that size would force through the owner's
         * deferred-page memory. shared_next instead gave a goal no report reaches until
         * something else advances, so a thread that only frees huge objects kept every one
         * of them mapped. Any thread may advance, so freers need no slot. */
        uint64_t goal = ng_qsbr_advance(&mi->interp->qsbr);
        /* Relaxed: read under the lock by everyone else. */
        ng_atomic_store(&page->qsbr_goal, goal, NG_RELAXED);
        s->owner = NULL;
        ng_mi_seglist_push(&mi->huge_waiting, s);
        NG_MI_LEN_ADD(mi->huge_waiting_n, 1);
    }
    ng_mi_interp_unlock(mi);
    if (!gated)
        ng_mi_segment_unmap(mi, s);
}

void ng_mi_huge_waiting_collect(ng_mi_interp *mi, ng_mi_thread *t, bool poll)
{
    /* Relaxed peek at the length (see ng_mi_interp): a stale answer only delays. */
    if (ng_atomic_load(&mi->huge_waiting_n, NG_RELAXED) == 0)
        return;
    uint64_t newest = 0;
    if (poll) {
        ng_mi_interp_lock(mi);
        for (ng_mi_segment *s = mi->huge_waiting; s != NULL; s = s->next)
            if (newest == 0 || NG_QSBR_LT(newest, s->pages[0].qsbr_goal))
                newest = s->pages[0].qsbr_goal;
        ng_mi_interp_unlock(mi);
        if (newest != 0)
            (void)ng_mi_goal_reached(mi, t, newest, true); /* the scan refreshes rd_seq */
    }
    ng_mi_segment *done = NULL;
    ng_mi_interp_lock(mi);
    for (ng_mi_segment *s = mi->huge_waiting, *next; s != NULL; s = next) {
        next = s->next;
        if (ng_mi_goal_reached(mi, NULL, s->pages[0].qsbr_goal, false)) {
            ng_mi_seglist_remove(&mi->huge_waiting, s);
            NG_MI_LEN_ADD(mi->huge_waiting_n, -1);
            s->next = done;
            done = s;
        }
    }
    ng_mi_interp_unlock(mi);
    while (done != NULL) {
        ng_mi_segment *next = done->next;
        ng_mi_segment_unmap(mi, done);
        done = next;
    }
}

int ng_mi_free_generic(ng_mi_segment *segment, ng_mi_page *page, void *p)
{
    /* The kind never changes while the segment is mapped, so any thread may read it. */
    if (segment->kind == NG_MI_SEGMENT_HUGE) {
        huge_free(segment);
        return NG_OK;
    }
    /* Relaxed: see ng_mi_free. */
    if (ng_atomic_load(&segment->thread_id, NG_RELAXED) == ng_thread_id()) {
        ng_mi_page_local_free(page, p);
        return NG_OK;
    }
    foreign_free(page, p);
    return NG_OK;
}

int ng_mi_free_unchecked(void *p)
{
    if (p == NULL)
        return NG_OK;
    ng_mi_segment *segment = ng_mi_segment_of(p);
    /* Relaxed: see ng_mi_free. */
    bool own = ng_atomic_load(&segment->thread_id, NG_RELAXED) == ng_thread_id();
    ng_mi_page *page = ng_mi_page_of(segment, p);
    if (segment->kind != NG_MI_SEGMENT_HUGE && own && page->flags == 0) {
        ng_mi_block_set_next(page, (ng_mi_block *)p, page->local_free);
        page->local_free = (ng_mi_block *)p;
        if (--page->used == 0)
            ng_mi_page_retire(page);
        return NG_OK;
    }
    return ng_mi_free_generic(segment, page, p);
}

#ifndef NG_MI_DEBUG
static bool list_contains(const ng_mi_page *page, const ng_mi_block *b, const void *p)
{
    for (size_t n = 0; b != NULL && n <= page->reserved; b = ng_mi_block_next(page, b), n++)
        if ((const void *)b == p)
            return true;
    return false;
}
#endif

/* Whether the block is an object-heap block of a page the calling thread owns while that
 * heap's state is not attached and no other state of the calling thread in that interpreter
 * is attached either: the owner's free would write page->local_free and used without
 * atomics, which a stop-the-world visitor reads (CPython frees objects only while attached).
 * Another attached state of the same interpreter on this thread keeps any stop-the-world of
 * it from completing (it waits for that state), so no visitor is walking then; the library
 * itself frees that way when such a state runs the detached one's delayed frees (a barrier
 * hands them to the interpreter queue). Huge segments are left out: their free takes the
 * interpreter lock, as the visitor does, and their owner field changes under that lock, so
 * it is not ours to read. */
static bool detached_owner_free(ng_mi_segment *s)
{
    if (s->heap_kind == NG_MI_HEAP_MEM || s->kind == NG_MI_SEGMENT_HUGE)
        return false;
    /* Relaxed: see ng_mi_free. Our own id means we wrote s->owner last (allocation, reclaim
     * and abandon all happen on the thread that owns or takes the segment), so the plain read
     * below races with nothing. */
    if (ng_atomic_load(&s->thread_id, NG_RELAXED) != ng_thread_id() || s->owner == NULL)
        return false;
    /* Relaxed: only this thread moves its own state out of ATTACHED; the stopper's
     * DETACHED -> SUSPENDED keeps it "not attached" either way. */
    if (ng_atomic_load(&s->owner->tstate->state, NG_RELAXED) == NG_TSTATE_ATTACHED)
        return false;
    /* This thread's own attached state (thread-local): no ordering with other threads. */
    ng_tstate *current = ng_tstate_current();
    return current == NULL || current->interp != s->mi->interp;
}

/* With the registry lock held (the segment stays mapped). */
static int check_block(ng_mi_segment *s, void *p)
{
    if (s->cookie != (NG_MI_SEGMENT_COOKIE ^ (uint64_t)(uintptr_t)s))
        return NG_EINVAL;
    /* Before the live bit: a refused free leaves the block live, to be freed once attached. */
    if (detached_owner_free(s))
        return NG_ESTATE;
    uintptr_t off = (uintptr_t)p - (uintptr_t)s;
    ng_mi_page *page;
    if (s->kind == NG_MI_SEGMENT_HUGE) {
        page = &s->pages[0];
        if (!page->in_use || (uint8_t *)p != page->start)
            return NG_EINVAL;
#ifdef NG_MI_DEBUG
        /* The exchange lets exactly one of any number of (racing) frees pass. Relaxed: see
         * alloc_internal.h. */
        return ng_atomic_exchange(&ng_mi_segment_debug(s)->huge_live, 0, NG_RELAXED) != 0
                   ? NG_OK
                   : NG_ESTATE;
#else
        /* Relaxed: written under the interpreter lock by the first free. */
        return ng_atomic_load(&page->qsbr_goal, NG_RELAXED) != 0 ? NG_ESTATE : NG_OK;
#endif
    }
    size_t index = off >> s->page_shift;
    if (index >= s->page_count)
        return NG_EINVAL;
    page = &s->pages[index];
    /* These fields are set before any block of the page is handed out and stay while one is
     * live, so reading them for a valid block races with nothing (in NG_MI_DEBUG builds they
     * change only under the registry lock we hold, so an invalid one races with nothing
     * either). */
    if (!page->in_use || page->block_size == 0 || (uint8_t *)p < page->start)
        return NG_EINVAL;
    size_t d = (size_t)((uint8_t *)p - page->start);
    if (d % page->block_size != 0 || d / page->block_size >= page->reserved)
        return NG_EINVAL;
#ifdef NG_MI_DEBUG
    /* capacity is the owner's (it grows as the page is carved): only the owner can tell a
     * block start never handed out; elsewhere that is reported as NG_ESTATE below. */
    if (ng_atomic_load(&s->thread_id, NG_RELAXED) == ng_thread_id() &&
        d / page->block_size >= page->capacity)
        return NG_EINVAL;
    /* The live bit, cleared before the block is touched: of two frees of one block, on any
     * threads, racing or not, exactly one sees it set (alloc_internal.h; relaxed justified
     * there). The bitmap stays while we hold the registry lock (ng_mi_segment_page_free). */
    uint64_t *live = ng_mi_segment_debug(s)->live[index];
    if (live == NULL)
        return NG_EINVAL; /* not in use (cannot be, given in_use above) */
    size_t bi = d / page->block_size;
    uint64_t m = (uint64_t)1 << (bi & 63);
    return (ng_atomic_fetch_and(&live[bi >> 6], ~m, NG_RELAXED) & m) ? NG_OK : NG_ESTATE;
#else
    /* Release builds call this only through ng_mi_free_checked used directly (ng_mi_free
     * does not check): there a double free is found by the owner, who may read its free
     * lists; another thread's double free passes. */
    if (ng_atomic_load(&s->thread_id, NG_RELAXED) != ng_thread_id())
        return NG_OK;
    if (page->used == 0 || list_contains(page, page->free, p) ||
        list_contains(page, page->local_free, p))
        return NG_ESTATE;
    if (d / page->block_size >= page->capacity)
        return NG_EINVAL; /* never carved, so never handed out */
    /* Acquire: the links of the pushed blocks (see foreign_free). */
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
    if (list_contains(page, (ng_mi_block *)(tf & ~NG_MI_DELAY_MASK), p))
        return NG_ESTATE;
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED);
    if (heap != NULL) {
        ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
        uintptr_t d_list = ng_atomic_load(&hd->thread_delayed_free, NG_ACQUIRE);
        for (ng_mi_block *b = (ng_mi_block *)d_list; b != NULL;
             b = ng_mi_block_next(ng_mi_page_of(ng_mi_segment_of(b), b), b))
            if ((void *)b == p)
                return NG_ESTATE;
    }
    return NG_OK;
#endif
}

bool ng_mi_free_refused_detached(const void *p)
{
    if (p == NULL)
        return false;
    ng_mi_segment *s = ng_mi_segment_of(p);
    bool refused = ng_mi_registry_lock_lookup(s) &&
                   s->cookie == (NG_MI_SEGMENT_COOKIE ^ (uint64_t)(uintptr_t)s) &&
                   detached_owner_free(s);
    ng_mi_registry_unlock();
    return refused;
}

int ng_mi_free_checked(void *p)
{
    if (p == NULL)
        return NG_OK;
    ng_mi_segment *s = ng_mi_segment_of(p);
    int st = NG_EINVAL;
    if (ng_mi_registry_lock_lookup(s))
        st = check_block(s, p);
#ifdef NG_MI_DEBUG
    else if (ng_mi_registry_gone_huge_locked(p))
        st = NG_ESTATE; /* a freed huge block whose segment is unmapped already */
#endif
    ng_mi_registry_unlock();
    if (st != NG_OK)
        return st;
    return ng_mi_free_unchecked(p);
}
