/* Heap walking (the GC's view): live blocks are the carved blocks of in-use pages that are on
 * no free list. A temporary bitmap per page marks the free ones. */
#include <stdlib.h>
#include <string.h>

#include "alloc_internal.h"
#include "tstate_internal.h"

static void mark_list(const ng_mi_page *page, const ng_mi_block *b, uint8_t *bits)
{
    for (size_t n = 0; b != NULL && n < page->capacity; b = ng_mi_block_next(page, b), n++) {
        size_t i = (size_t)((const uint8_t *)b - page->start) / page->block_size;
        if (i < page->capacity)
            bits[i / 8] |= (uint8_t)(1u << (i % 8));
    }
}

/* Returns NG_OK, or 1 when the callback stopped the walk, or NG_ENOMEM. */
static int visit_page(const ng_mi_page *page, bool thread_free_is_free, ng_mi_visit_fn *fn,
                      void *arg)
{
    if (!page->in_use || page->used == 0)
        return NG_OK;
    uint8_t *bits = calloc((page->capacity + 7) / 8 + 1, 1);
    if (bits == NULL)
        return NG_ENOMEM;
    mark_list(page, page->free, bits);
    mark_list(page, page->local_free, bits);
    if (thread_free_is_free) {
        /* Acquire: the pushers' links (see foreign_free). */
        uintptr_t tf = ng_atomic_load(&((ng_mi_page *)page)->thread_free, NG_ACQUIRE);
        mark_list(page, (const ng_mi_block *)(tf & ~NG_MI_DELAY_MASK), bits);
    }
    int rc = NG_OK;
    for (size_t i = 0; i < page->capacity; i++)
        if (!(bits[i / 8] & (1u << (i % 8))) &&
            !fn(page->start + i * page->block_size, page->block_size, arg)) {
            rc = 1;
            break;
        }
    free(bits);
    return rc;
}

/* Huge blocks of a list, copied under the lock so the callbacks run without it. */
static int visit_huge(ng_mi_interp *mi, ng_mi_segment **list, int kind, ng_mi_visit_fn *fn,
                      void *arg)
{
    ng_mi_interp_lock(mi);
    size_t n = 0;
    for (ng_mi_segment *s = *list; s != NULL; s = s->next)
        n += s->heap_kind == kind;
    void **blocks = n ? malloc(n * sizeof *blocks) : NULL;
    size_t *sizes = n ? malloc(n * sizeof *sizes) : NULL;
    if (n && (blocks == NULL || sizes == NULL)) {
        ng_mi_interp_unlock(mi);
        free(blocks);
        free(sizes);
        return NG_ENOMEM;
    }
    size_t i = 0;
    for (ng_mi_segment *s = *list; s != NULL; s = s->next)
        if (s->heap_kind == kind) {
            blocks[i] = s->pages[0].start;
            sizes[i++] = s->pages[0].block_size;
        }
    ng_mi_interp_unlock(mi);
    int rc = NG_OK;
    for (i = 0; i < n && rc == NG_OK; i++)
        if (!fn(blocks[i], sizes[i], arg))
            rc = 1;
    free(blocks);
    free(sizes);
    return rc;
}

int ng_mi_heap_visit(ng_mi_heap *heap, ng_mi_visit_fn *fn, void *arg)
{
    if (heap == NULL || fn == NULL)
        return NG_EINVAL;
    ng_mi_thread *t = heap->thread;
    bool owner = t->thread_id == ng_thread_id();
    if (!ng_mi_may_access(t))
        return NG_EWRONGTHREAD;
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    if (owner) {
        /* Collect only: goals and queues stay as they are (R11 b). */
        ng_mi_heap_drain_delayed(heap);
        for (ng_mi_segment *s = hd->segments; s != NULL; s = s->next)
            for (uint32_t i = 0; i < s->page_count; i++)
                if (s->pages[i].in_use)
                    ng_mi_page_collect_thread_free(&s->pages[i]);
    }
    for (ng_mi_segment *s = hd->segments; s != NULL; s = s->next)
        for (uint32_t i = 0; i < s->page_count; i++) {
            int rc = visit_page(&s->pages[i], false, fn, arg);
            if (rc != NG_OK)
                return rc == 1 ? NG_OK : rc;
        }
    int rc = visit_huge(t->mi, &t->huge, heap->kind, fn, arg);
    return rc == 1 ? NG_OK : rc;
}

int ng_mi_abandoned_visit(ng_interp *interp, ng_mi_heap_kind kind, ng_mi_visit_fn *fn,
                          void *arg)
{
    if (interp == NULL || fn == NULL || (unsigned)kind >= NG_MI_HEAP_COUNT)
        return NG_EINVAL;
    /* The pool is walked without the lock, which is safe only for the thread that stopped
     * the world: every thread with a state is suspended then, and none of them can be a
     * second walker. Another thread seeing world_stopped may be racing that walker (or
     * the restart), so it gets NG_ESTATE like a caller outside any stop. */
    if (!ng_world_stopped(interp) || !ng_stw_stopped_by_me(interp))
        return NG_ESTATE;
    ng_mi_interp *mi = ng_mi_interp_of(interp);
    if (mi == NULL)
        return NG_OK;
    /* The segments leave the pool for the walk, so the callbacks run without the lock (no
     * thread with a state can reclaim while the world is stopped anyway). */
    ng_mi_interp_lock(mi);
    ng_mi_segment *list = mi->abandoned[kind];
    uint64_t len = mi->abandoned_n[kind];
    mi->abandoned[kind] = NULL;
    NG_MI_LEN_ADD(mi->abandoned_n[kind], -len);
    ng_mi_interp_unlock(mi);
    int rc = NG_OK;
    ng_mi_segment *last = NULL;
    for (ng_mi_segment *s = list; s != NULL; s = s->next) {
        last = s;
        for (uint32_t i = 0; i < s->page_count && rc == NG_OK; i++)
            rc = visit_page(&s->pages[i], true, fn, arg);
    }
    ng_mi_interp_lock(mi);
    if (last != NULL) {
        last->next = mi->abandoned[kind];
        if (mi->abandoned[kind] != NULL)
            mi->abandoned[kind]->prev = last;
        mi->abandoned[kind] = list;
    }
    NG_MI_LEN_ADD(mi->abandoned_n[kind], len);
    ng_mi_interp_unlock(mi);
    if (rc == NG_OK)
        rc = visit_huge(mi, &mi->abandoned_huge, kind, fn, arg);
    return rc == 1 ? NG_OK : rc;
}
