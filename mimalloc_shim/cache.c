/* The block cache (nogil/alloc.h, ng_mi_block_cache): its setup, the slow path's pop, and
 * the two ways blocks leave it for their pages (a page that stops serving its size class, a
 * heap that collects or is abandoned).
 *
 * Invariant: a cached block is free, and its page is in use in the block's size class with
 * `used` not counting it. Pushes keep it (only while the page keeps another live block);
 * whatever takes a page out of its size class (ng_mi_segment_page_free) or makes it wait for
 * a QSBR goal (ng_mi_page_defer) calls ng_mi_cache_evict_page first. */
#include "alloc_internal.h"

/* Blocks per bin: about 8 KiB of each size class, between 8 and 64 blocks. The cache holds
 * no page back (a page's last free goes to the page, which takes its cached blocks back), so
 * the bound only limits how far back the LIFO remembers. */
static uint32_t cache_cap(size_t block_size)
{
    size_t n = 8192 / block_size;
    return (uint32_t)(n < 8 ? 8 : n > 64 ? 64 : n);
}

void ng_mi_cache_init(ng_mi_heap *heap)
{
    for (size_t w = 0; w <= NG_MI_DIRECT_WSIZE; w++)
        heap->cache_bin[w] = (uint8_t)ng_mi_heap_bin(heap->kind, w * 8);
    for (size_t b = 0; b < NG_MI_CACHE_BINS; b++) {
        size_t lo, hi;
        heap->cache[b].head = NULL;
        heap->cache[b].count = 0;
        heap->cache[b].cap = ng_mi_bin_wsize_range(heap->kind, b, &lo, &hi)
                                 ? cache_cap(ng_mi_bin_size(b))
                                 : 0;
    }
}

void *ng_mi_cache_pop(ng_mi_heap *heap, size_t bin)
{
    if (bin >= NG_MI_CACHE_BINS)
        return NULL;
    ng_mi_block_cache *c = &heap->cache[bin];
    ng_mi_block *b = c->head;
    if (b == NULL)
        return NULL;
    ng_mi_page *page = ng_mi_page_of(ng_mi_segment_of(b), b);
    c->head = ng_mi_block_next(page, b);
    c->count--;
    page->used++;
#ifdef NG_MI_DEBUG
    ng_mi_debug_mark_live(page, b);
#endif
    return b;
}

void ng_mi_cache_evict_page(ng_mi_page *page)
{
    ng_mi_heap *heap = ng_atomic_load(&page->heap, NG_RELAXED); /* ours, or NULL */
    if (heap == NULL || page->bin >= NG_MI_CACHE_BINS)
        return;
    ng_mi_block_cache *c = &heap->cache[page->bin];
    const uint8_t *lo = page->start, *hi = page->start + (size_t)page->capacity * page->block_size;
    ng_mi_block **link = &c->head;
    while (*link != NULL) {
        ng_mi_block *b = *link;
        ng_mi_block **next = (ng_mi_block **)((char *)b + page->link_offset);
        if ((const uint8_t *)b >= lo && (const uint8_t *)b < hi) {
            *link = *next;
            *next = page->local_free;
            page->local_free = b;
            c->count--;
        }
        else {
            link = next;
        }
    }
}

void ng_mi_cache_flush(ng_mi_heap *heap)
{
    for (size_t bin = 0; bin < NG_MI_CACHE_BINS; bin++) {
        ng_mi_block_cache *c = &heap->cache[bin];
        ng_mi_block *b = c->head;
        c->head = NULL;
        c->count = 0;
        while (b != NULL) {
            ng_mi_page *page = ng_mi_page_of(ng_mi_segment_of(b), b);
            ng_mi_block *next = ng_mi_block_next(page, b);
            /* A full page (its free lists ran out after the block was cached) serves its
             * class again. `used` already leaves the block out; a page left empty is the
             * caller's to retire (collect and abandon walk every page next). */
            if (page->flags & NG_MI_PAGE_IN_FULL)
                ng_mi_page_unfull(page);
            ng_mi_block_set_next(page, b, page->local_free);
            page->local_free = b;
            b = next;
        }
    }
}
