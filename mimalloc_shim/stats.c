/* Statistics. Gauges (pages, blocks, mappings) are counted by walking the structures, which
 * only their owner (or a thread that stopped the world) may do; other threads' heaps are
 * reported from the snapshot their owner took at its last collection or stats call.
 * Counters since creation are single-writer words read relaxed. */
#include <string.h>

#include "alloc_internal.h"
#include "tstate_internal.h"

static void page_gauges(const ng_mi_page *page, ng_mi_stats *out)
{
    if (!page->in_use) {
        out->pages_free++;
    }
    else if (page->used > 0) {
        out->pages_in_use++;
        out->blocks_in_use += page->used;
        out->bytes_in_use += (uint64_t)page->used * page->block_size;
    }
    else if (page->qsbr_goal != 0) {
        out->pages_waiting++;
        out->bytes_waiting += page->area;
    }
}

/* With mi->lock held (the huge list is under it). */
static void heap_gauges_locked(ng_mi_heap *heap, ng_mi_stats *out)
{
    ng_mi_thread *t = heap->thread;
    for (ng_mi_segment *s = t->data[heap->kind].segments; s != NULL; s = s->next) {
        out->segments++;
        out->bytes_mapped += s->size;
        out->segments_hugepage += s->hugepages;
        for (uint32_t i = 0; i < s->page_count; i++)
            page_gauges(&s->pages[i], out);
    }
    if (heap->kind == NG_MI_HEAP_MEM && t->cached != NULL) {
        out->segments++;
        out->bytes_mapped += t->cached->size;
        out->segments_hugepage += t->cached->hugepages;
        out->pages_free += t->cached->page_count;
    }
    for (ng_mi_segment *s = t->huge; s != NULL; s = s->next) {
        if (s->heap_kind != heap->kind)
            continue;
        out->segments++;
        out->bytes_mapped += s->size;
        out->huge_blocks++;
        out->pages_in_use++;
        out->blocks_in_use++;
        out->bytes_in_use += s->pages[0].block_size;
    }
}

void ng_mi_heap_gauges(ng_mi_heap *heap, ng_mi_stats *out)
{
    ng_mi_interp_lock(heap->thread->mi);
    heap_gauges_locked(heap, out);
    ng_mi_interp_unlock(heap->thread->mi);
}

void ng_mi_counters_add(ng_mi_stats *out, const ng_mi_counters *c)
{
    /* Relaxed: single-writer counters, read for statistics. */
    out->pages_deferred += ng_atomic_load(&c->pages_deferred, NG_RELAXED);
    out->pages_released_after_goal += ng_atomic_load(&c->pages_released_after_goal, NG_RELAXED);
    out->pages_reused_same_class += ng_atomic_load(&c->pages_reused_same_class, NG_RELAXED);
    out->segments_reclaimed += ng_atomic_load(&c->segments_reclaimed, NG_RELAXED);
    out->mmap_failures += ng_atomic_load(&c->mmap_failures, NG_RELAXED);
}

#define GAUGE_FIELDS(X)                                                                   \
    X(blocks_in_use) X(bytes_in_use) X(pages_in_use) X(pages_waiting) X(bytes_waiting)    \
    X(pages_free) X(segments) X(bytes_mapped) X(segments_hugepage) X(huge_blocks)

static void store_snapshot(ng_mi_heap_data *hd, const ng_mi_stats *g)
{
    /* Relaxed: a statistics snapshot; readers accept any recent value of each field. */
#define STORE(f) ng_atomic_store(&hd->snap.f, g->f, NG_RELAXED);
    GAUGE_FIELDS(STORE)
#undef STORE
}

static void add_snapshot(ng_mi_stats *out, ng_mi_heap_data *hd)
{
#define LOAD(f) out->f += ng_atomic_load(&hd->snap.f, NG_RELAXED); /* see store_snapshot */
    GAUGE_FIELDS(LOAD)
#undef LOAD
}

void ng_mi_refresh_snapshot(ng_mi_heap *heap)
{
    ng_mi_stats g;
    memset(&g, 0, sizeof g);
    ng_mi_heap_gauges(heap, &g);
    store_snapshot(ng_mi_heap_data_of(heap), &g);
}

int ng_mi_heap_get_stats(ng_mi_heap *heap, ng_mi_stats *out)
{
    if (heap == NULL || out == NULL)
        return NG_EINVAL;
    if (!ng_mi_may_access(heap->thread))
        return NG_EWRONGTHREAD;
    memset(out, 0, sizeof *out);
    ng_mi_heap_gauges(heap, out);
    ng_mi_counters_add(out, &ng_mi_heap_data_of(heap)->c);
    if (heap->thread->thread_id == ng_thread_id())
        store_snapshot(ng_mi_heap_data_of(heap), out);
    return NG_OK;
}

static void pool_gauges_locked(ng_mi_interp *mi, ng_mi_stats *out)
{
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        for (ng_mi_segment *s = mi->abandoned[k]; s != NULL; s = s->next)
            for (uint32_t i = 0; i < s->page_count; i++)
                if (s->pages[i].in_use)
                    page_gauges(&s->pages[i], out);
    for (ng_mi_segment *s = mi->abandoned_huge; s != NULL; s = s->next) {
        out->huge_blocks++;
        out->pages_in_use++;
        out->blocks_in_use++;
        out->bytes_in_use += s->pages[0].block_size;
    }
    for (ng_mi_segment *s = mi->huge_waiting; s != NULL; s = s->next) {
        out->pages_waiting++;
        out->bytes_waiting += s->pages[0].block_size;
    }
}

int ng_mi_interp_get_stats(ng_interp *interp, ng_mi_stats *out)
{
    if (interp == NULL || out == NULL)
        return NG_EINVAL;
    if (interp->magic != NG_INTERP_MAGIC)
        return NG_ERELEASED;
    memset(out, 0, sizeof *out);
    ng_mi_interp *mi = ng_mi_interp_of(interp);
    if (mi == NULL)
        return NG_OK;
    bool stopped = ng_world_stopped(interp) && ng_stw_stopped_by_me(interp);
    uint64_t me = ng_thread_id();
    ng_mi_interp_lock(mi);
    for (ng_mi_thread *t = mi->threads; t != NULL; t = t->next)
        for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
            if (stopped || t->thread_id == me)
                heap_gauges_locked(&t->heaps[k], out);
            else
                add_snapshot(out, &t->data[k]);
            ng_mi_counters_add(out, &t->data[k].c);
        }
    pool_gauges_locked(mi, out);
    out->pages_abandoned = mi->pages_abandoned;
    ng_mi_counters_add(out, &mi->dead);
    ng_mi_interp_unlock(mi);
    /* Relaxed: statistics. Mappings are counted exactly, whoever holds them. */
    out->segments = ng_atomic_load(&mi->segments, NG_RELAXED);
    out->bytes_mapped = ng_atomic_load(&mi->bytes_mapped, NG_RELAXED);
    out->segments_hugepage = ng_atomic_load(&mi->segments_hugepage, NG_RELAXED);
    out->segments_abandoned = ng_atomic_load(&mi->segments_abandoned, NG_RELAXED);
    out->mmap_failures += ng_atomic_load(&mi->mmap_failures, NG_RELAXED);
    return NG_OK;
}
