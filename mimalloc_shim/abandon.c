/* Abandon and reclaim: a thread state's heaps outlive it in the interpreter's pool.
 *
 * Abandoning (the state goes away): every page is set to NEVER-delayed (so no freer holds the
 * heap any more), the heap's delayed list is drained, every page collected; empty pages are
 * freed (MEM) or deferred (object heaps: they just became empty, readers may still look), the
 * deferred pages whose goal is reached are released, and then each segment is unmapped when
 * nothing is left in it, or moved to the pool: no owner, thread id NG_MI_NO_THREAD, waiting
 * pages unlinked from the FIFO but keeping their goal.
 *
 * Reclaiming (a thread that needs pages, ng_mi_heap_collect with force, a fork child's
 * survivor): segments of the heap's kind move to the reclaiming heap set; in-use pages join
 * the heap of their kind; waiting pages whose goal is not reached go to its FIFO only, never
 * to an allocation queue, so no thread hands their blocks out before the goal; the others
 * become free pages of the segment. */
#include <stdlib.h>

#include "alloc_internal.h"

static void abandon_segment(ng_mi_thread *t, ng_mi_segment *s)
{
    ng_mi_interp *mi = t->mi;
    for (uint32_t i = 0; i < s->page_count; i++) {
        ng_mi_page *page = &s->pages[i];
        if (!page->in_use)
            continue;
        ng_mi_page_unqueue(page);
        ng_mi_qsbr_unlink(t, page); /* the goal stays (M2) */
        page->retire_expire = 0;
        page->flags = 0;
        /* Release: with the pool lock, publishes the page to the reclaimer. */
        ng_atomic_store(&page->heap, NULL, NG_RELEASE);
    }
    ng_mi_seglist_remove(&t->data[s->heap_kind].segments, s);
    /* Relaxed: NG_MI_NO_THREAD matches no thread, so every free takes the out-of-line path
     * from now. */
    ng_atomic_store(&s->thread_id, NG_MI_NO_THREAD, NG_RELAXED);
    s->owner = NULL;
    ng_mi_interp_lock(mi);
    ng_mi_seglist_push(&mi->abandoned[s->heap_kind], s);
    NG_MI_LEN_ADD(mi->abandoned_n[s->heap_kind], 1);
    mi->pages_abandoned += s->pages_used;
    ng_mi_interp_unlock(mi);
    ng_atomic_fetch_add(&mi->segments_abandoned, 1, NG_RELAXED); /* statistics */
}

void ng_mi_thread_abandon(ng_mi_thread *t, bool fork_child)
{
    ng_mi_interp *mi = t->mi;
    t->abandoning = true;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        for (ng_mi_segment *s = t->data[k].segments; s != NULL; s = s->next)
            for (uint32_t i = 0; i < s->page_count; i++)
                if (s->pages[i].in_use)
                    ng_mi_page_set_delayed(&s->pages[i], NG_MI_DELAY_NEVER, fork_child);
    /* No freer can push onto our heaps' delayed lists any more. */
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        ng_mi_heap_drain_delayed(&t->heaps[k]);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        ng_mi_heap *heap = &t->heaps[k];
        for (ng_mi_segment *s = t->data[k].segments; s != NULL; s = s->next)
            for (uint32_t i = 0; i < s->page_count; i++) {
                ng_mi_page *page = &s->pages[i];
                if (!page->in_use)
                    continue;
                ng_mi_page_collect(page);
                if (page->used != 0 || (page->reserved_flags & NG_MI_PF_QSBR_LINKED))
                    continue;
                if (heap->use_qsbr) {
                    ng_mi_page_defer(page);
                }
                else {
                    ng_mi_page_unqueue(page);
                    ng_mi_segment_page_free(page);
                }
            }
    }
    ng_mi_qsbr_collect(t, !fork_child, false);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        for (ng_mi_segment *s = t->data[k].segments, *next; s != NULL; s = next) {
            next = s->next;
            if (s->pages_used == 0) {
                ng_mi_seglist_remove(&t->data[k].segments, s);
                ng_mi_segment_unmap(mi, s);
            }
            else {
                abandon_segment(t, s);
            }
        }
    }
    if (t->cached != NULL) {
        ng_mi_segment_unmap(mi, t->cached);
        t->cached = NULL;
    }
    ng_mi_interp_lock(mi);
    while (t->huge != NULL) {
        ng_mi_segment *s = t->huge;
        ng_mi_seglist_remove(&t->huge, s);
        ng_atomic_store(&s->pages[0].heap, NULL, NG_RELAXED); /* under the lock */
        /* Relaxed, as for the other segments above: frees from now on go out of line,
         * where a huge block's free takes this lock. */
        ng_atomic_store(&s->thread_id, NG_MI_NO_THREAD, NG_RELAXED);
        s->owner = NULL;
        ng_mi_seglist_push(&mi->abandoned_huge, s);
        NG_MI_LEN_ADD(mi->abandoned_huge_n, 1);
        mi->pages_abandoned++;
    }
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        mi->threads = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        const ng_mi_counters *c = &t->data[k].c;
        mi->dead.pages_deferred += c->pages_deferred;
        mi->dead.pages_released_after_goal += c->pages_released_after_goal;
        mi->dead.pages_reused_same_class += c->pages_reused_same_class;
        mi->dead.segments_reclaimed += c->segments_reclaimed;
        mi->dead.mmap_failures += c->mmap_failures;
    }
    ng_mi_interp_unlock(mi);
    free(t);
}

/* Adopts one abandoned segment into `t`. */
static void adopt_segment(ng_mi_thread *t, ng_mi_segment *s)
{
    ng_mi_interp *mi = t->mi;
    /* Relaxed: only we compare it with our own id; others take the slow path either way. */
    ng_atomic_store(&s->thread_id, t->thread_id, NG_RELAXED);
    s->owner = t;
    ng_mi_seglist_push(&t->data[s->heap_kind].segments, s);
    s->pages_used++; /* keeps the segment while its pages are sorted out */
    for (uint32_t i = 0; i < s->page_count; i++) {
        ng_mi_page *page = &s->pages[i];
        if (!page->in_use)
            continue;
        ng_mi_heap *heap = &t->heaps[page->heap_kind];
        /* Relaxed: freers read it only in the FREEING state, which needs USE, which only we
         * set later (with a release CAS). */
        ng_atomic_store(&page->heap, heap, NG_RELAXED);
        page->flags = 0;
        page->reserved_flags = 0;
        ng_mi_page_set_delayed(page, NG_MI_DELAY_NORMAL, false);
        ng_mi_page_collect(page);
        if (page->used == 0 && page->qsbr_goal != 0) {
            if (ng_mi_goal_reached(mi, t, page->qsbr_goal, false)) {
                page->qsbr_goal = 0;
                NG_MI_COUNT_ADD(t->data[page->heap_kind].c.pages_released_after_goal, 1);
                ng_mi_segment_page_free(page);
            }
            else {
                ng_mi_qsbr_link(t, page); /* not queued: nobody allocates from it yet */
            }
            continue;
        }
        page->qsbr_goal = 0;
        if (page->used == 0 && !heap->use_qsbr) {
            ng_mi_segment_page_free(page);
            continue;
        }
        ng_mi_page_enqueue(page, page->used != 0);
        if (page->used == 0)
            ng_mi_page_defer(page); /* emptied while abandoned: readers may still look */
    }
    s->pages_used--;
    NG_MI_COUNT_ADD(t->data[s->heap_kind].c.segments_reclaimed, 1);
    if (s->pages_used == 0)
        ng_mi_segment_release_empty(t, s);
}

size_t ng_mi_reclaim(ng_mi_heap *heap, size_t max, bool huge)
{
    ng_mi_thread *t = heap->thread;
    ng_mi_interp *mi = t->mi;
    size_t n = 0;
    /* Relaxed peeks at the lengths (see ng_mi_interp). */
    while (n < max && ng_atomic_load(&mi->abandoned_n[heap->kind], NG_RELAXED) != 0) {
        ng_mi_interp_lock(mi);
        ng_mi_segment *s = mi->abandoned[heap->kind];
        if (s != NULL) {
            ng_mi_seglist_remove(&mi->abandoned[heap->kind], s);
            NG_MI_LEN_ADD(mi->abandoned_n[heap->kind], -1);
            mi->pages_abandoned -= s->pages_used;
        }
        ng_mi_interp_unlock(mi);
        if (s == NULL)
            break;
        adopt_segment(t, s);
        n++;
    }
    if (huge && ng_atomic_load(&mi->abandoned_huge_n, NG_RELAXED) != 0) {
        ng_mi_interp_lock(mi);
        for (ng_mi_segment *s = mi->abandoned_huge, *next; s != NULL; s = next) {
            next = s->next;
            if (s->heap_kind != heap->kind)
                continue;
            ng_mi_seglist_remove(&mi->abandoned_huge, s);
            NG_MI_LEN_ADD(mi->abandoned_huge_n, -1);
            mi->pages_abandoned--;
            ng_atomic_store(&s->pages[0].heap, heap, NG_RELAXED); /* under the lock */
            ng_atomic_store(&s->thread_id, t->thread_id, NG_RELAXED);
            s->owner = t;
            ng_mi_seglist_push(&t->huge, s);
            n++;
        }
        ng_mi_interp_unlock(mi);
    }
    return n;
}
