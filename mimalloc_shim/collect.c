/* ng_mi_heap_collect: the owner takes back other threads' frees, retires empty pages,
 * releases deferred pages whose goal is reached and, with force, adopts the abandoned
 * segments of its heap kind. */
#include "alloc_internal.h"

static void collect_queue(ng_mi_heap *heap, ng_mi_page_queue *q)
{
    for (ng_mi_page *page = q->first, *next; page != NULL; page = next) {
        next = page->next;
        if (page->reserved_flags & NG_MI_PF_QSBR_LINKED)
            continue; /* waiting: nothing to collect, and its goal stays */
        ng_mi_page_collect(page);
        if (page->used == 0) {
            page->retire_expire = 0;
            if (heap->use_qsbr) {
                ng_mi_page_defer(page);
            }
            else {
                ng_mi_page_unqueue(page);
                ng_mi_segment_page_free(page);
            }
        }
        else if ((page->flags & NG_MI_PAGE_IN_FULL) && page->free != NULL) {
            ng_mi_page_unfull(page);
        }
    }
}

int ng_mi_heap_collect(ng_mi_heap *heap, bool force)
{
    if (heap == NULL)
        return NG_EINVAL;
    ng_mi_thread *t = heap->thread;
    if (t->thread_id != ng_thread_id())
        return NG_EWRONGTHREAD;
    ng_mi_heap_drain_delayed(heap);
    if (force) {
        ng_mi_reclaim(heap, SIZE_MAX, true);
        ng_mi_heap_drain_delayed(heap);
    }
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    ng_mi_heap_collect_retired(heap, true);
    /* Pages move between queues (full -> bin, bin -> back of bin), so the full queue goes
     * first and each bin queue is walked from a saved successor. */
    collect_queue(heap, &hd->full);
    for (size_t b = 0; b < NG_MI_BIN_COUNT; b++)
        collect_queue(heap, &hd->bins[b]);
    ng_mi_qsbr_collect(t, true, true);
    ng_mi_huge_waiting_collect(t->mi, t, true);
    ng_mi_refresh_snapshot(heap);
    return NG_OK;
}
