/* QSBR-gated page reuse (spec §6.4, R11): an empty page of an object heap keeps its blocks'
 * headers for lock-free readers until a QSBR goal is reached.
 *
 * A deferred ("waiting") page has a goal, sits in its owner thread's FIFO and stays at the
 * back of its bin queue, so the slow path may still hand its blocks out for the same size
 * class (dropping the goal, M3), but direct[] never points at it: the inline path would skip
 * that step. It goes back to its segment, where any size class may take it, only once its
 * goal is reached. The FIFO is processed from the oldest page and stops at the first goal not
 * reached: goals only grow along the list. */
#include "alloc_internal.h"

void ng_mi_qsbr_link(ng_mi_thread *t, ng_mi_page *page)
{
    page->qsbr_next = NULL;
    page->qsbr_prev = t->qsbr_tail;
    if (t->qsbr_tail != NULL)
        t->qsbr_tail->qsbr_next = page;
    else
        t->qsbr_head = page;
    t->qsbr_tail = page;
    page->reserved_flags |= NG_MI_PF_QSBR_LINKED;
}

void ng_mi_qsbr_unlink(ng_mi_thread *t, ng_mi_page *page)
{
    if (!(page->reserved_flags & NG_MI_PF_QSBR_LINKED))
        return;
    if (page->qsbr_prev != NULL)
        page->qsbr_prev->qsbr_next = page->qsbr_next;
    else
        t->qsbr_head = page->qsbr_next;
    if (page->qsbr_next != NULL)
        page->qsbr_next->qsbr_prev = page->qsbr_prev;
    else
        t->qsbr_tail = page->qsbr_prev;
    page->qsbr_prev = page->qsbr_next = NULL;
    page->reserved_flags &= (uint8_t)~NG_MI_PF_QSBR_LINKED;
}

static ng_qsbr_slot *slot_of(ng_mi_thread *t)
{
    return (t != NULL && t->tstate != NULL) ? t->tstate->qsbr : NULL;
}

uint64_t ng_mi_goal_now(ng_mi_interp *mi, ng_mi_thread *t, size_t bytes)
{
    ng_qsbr_slot *slot = slot_of(t);
    if (slot != NULL) {
        uint64_t goal = ng_qsbr_goal_for_page(slot, bytes);
        if (goal != 0)
            return goal;
    }
    /* Seq-cst fence: the frees that emptied the memory must be ordered before the load of
     * the write sequence the goal is derived from (see ng_qsbr_shared_next). */
    ng_atomic_fence(NG_SEQ_CST);
    return ng_qsbr_shared_next(&mi->interp->qsbr);
}

bool ng_mi_goal_reached(ng_mi_interp *mi, ng_mi_thread *t, uint64_t goal, bool poll)
{
    /* Seq-cst load of rd_seq, as ng_qsbr_goal_reached does. */
    if (NG_QSBR_LEQ(goal, ng_atomic_load(&mi->interp->qsbr.rd_seq, NG_SEQ_CST)))
        return true;
    ng_qsbr_slot *slot = slot_of(t);
    /* Without a slot (a fork child clearing a dead thread's heaps) nothing is known to be
     * safe yet: the page keeps its goal for whoever reclaims it. */
    return poll && slot != NULL && ng_qsbr_poll(slot, goal);
}

void ng_mi_page_defer(ng_mi_page *page)
{
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED); /* ours */
    ng_mi_thread *t = heap->thread;
    /* R11 (a): the full queue is never searched, so a deferred page there could not serve
     * its size class. */
    if (page->flags & NG_MI_PAGE_IN_FULL)
        ng_mi_page_unfull(page);
    if (page->reserved_flags & NG_MI_PF_QSBR_LINKED)
        return;
    /* R11 (c): the goal comes from the slot of the state owning the page's heap, which is
     * not necessarily the calling thread's (stop-the-world, fork child). Without a slot an
     * existing goal stays (it is at least as old, so never later than needed). */
    if (slot_of(t) != NULL || page->qsbr_goal == 0)
        page->qsbr_goal = ng_mi_goal_now(t->mi, t, page->area);
    page->retire_expire = 0;
    ng_mi_qsbr_link(t, page);
    if (page->reserved_flags & NG_MI_PF_QUEUED) {
        ng_mi_page_unqueue(page);
        ng_mi_page_enqueue(page, false);
    }
    NG_MI_COUNT_ADD(t->data[heap->kind].c.pages_deferred, 1);
}

void ng_mi_page_reuse_waiting(ng_mi_page *page)
{
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED);
    ng_mi_thread *t = heap->thread;
    ng_mi_qsbr_unlink(t, page);
    page->qsbr_goal = 0;
    NG_MI_COUNT_ADD(t->data[heap->kind].c.pages_reused_same_class, 1);
}

/* An empty page goes back to its segment (any size class may take it). */
static void page_release(ng_mi_page *page)
{
    ng_mi_page_unqueue(page);
    ng_mi_segment_page_free(page);
}

void ng_mi_page_retire(ng_mi_page *page)
{
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED);
    if (page->flags & NG_MI_PAGE_IN_FULL)
        ng_mi_page_unfull(page);
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    ng_mi_page_queue *q = &hd->bins[page->bin];
    /* The only page of its size class stays a little while, in its class: a loop that
     * allocates and frees one block would otherwise release (or, in an object heap, defer
     * with a goal and take back) a page each time. Staying in its own size class needs no
     * goal (spec 6.1: same-class reuse is safe at once); the goal comes when the delay
     * expires (ng_mi_heap_collect_retired) or the heap is abandoned. */
    if (q->first == page && q->last == page && page->block_size <= NG_MI_MEDIUM_MAX &&
        !heap->thread->abandoning) {
        page->retire_expire = page->block_size <= NG_MI_SMALL_MAX ? 16 : 4;
        if (hd->retired_min > hd->retired_max) {
            hd->retired_min = hd->retired_max = page->bin;
        }
        else {
            if (page->bin < hd->retired_min)
                hd->retired_min = page->bin;
            if (page->bin > hd->retired_max)
                hd->retired_max = page->bin;
        }
        return;
    }
    if (heap->use_qsbr)
        ng_mi_page_defer(page);
    else
        page_release(page);
}

void ng_mi_heap_collect_retired(ng_mi_heap *heap, bool all)
{
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    if (hd->retired_min > hd->retired_max)
        return;
    size_t lo = hd->retired_min, hi = hd->retired_max;
    hd->retired_min = 1;
    hd->retired_max = 0;
    for (size_t b = lo; b <= hi; b++) {
        ng_mi_page *page = hd->bins[b].first;
        if (page == NULL || page->retire_expire == 0)
            continue;
        if (page->used != 0) {
            page->retire_expire = 0;
            continue;
        }
        if (all || --page->retire_expire == 0) {
            page->retire_expire = 0;
            if (heap->use_qsbr)
                ng_mi_page_defer(page);
            else
                page_release(page);
            continue;
        }
        if (hd->retired_min > hd->retired_max)
            hd->retired_min = hd->retired_max = (uint8_t)b;
        else
            hd->retired_max = (uint8_t)b;
    }
}

size_t ng_mi_qsbr_collect(ng_mi_thread *t, bool poll, bool advance)
{
    ng_mi_interp *mi = t->mi;
    ng_qsbr_shared *shared = &mi->interp->qsbr;
    /* An explicit collection may advance: a goal past the write sequence is reached by no
     * report until someone does. Relaxed: a stale value only costs an extra advance. */
    if (advance && t->qsbr_head != NULL &&
        NG_QSBR_LT(ng_atomic_load(&shared->wr_seq, NG_RELAXED), t->qsbr_head->qsbr_goal))
        ng_qsbr_advance(shared);
    size_t released = 0;
    bool polled = false;
    ng_mi_page *page;
    while ((page = t->qsbr_head) != NULL) {
        ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED);
        if (page->used != 0) { /* allocated from meanwhile: no longer deferred */
            ng_mi_qsbr_unlink(t, page);
            page->qsbr_goal = 0;
            continue;
        }
        /* One scan per collection: after it rd_seq says what it found. */
        if (!ng_mi_goal_reached(mi, t, page->qsbr_goal, poll && !polled)) {
            if (!poll || polled)
                break;
            polled = true;
            continue;
        }
        ng_mi_qsbr_unlink(t, page);
        page->qsbr_goal = 0;
        NG_MI_COUNT_ADD(t->data[heap->kind].c.pages_released_after_goal, 1);
        page_release(page);
        released++;
    }
    return released;
}
