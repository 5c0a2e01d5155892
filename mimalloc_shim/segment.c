/* Segments: the 4 MiB (or bigger, for huge blocks) mappings pages are carved from, and the
 * process-wide registry of mapped segments that checked frees use to recognise pointers.
 *
 * A segment belongs to one heap set and serves one heap kind. Its header (this struct and
 * the page descriptors) sits at its start, so the first page is shorter than the others. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc_internal.h"

/* ---- Registry ------------------------------------------------------------------------------ */

/* An open-addressing set of segment addresses. Only checked frees look things up, but every
 * map and unmap updates it so that the set is right whenever checks are on. */
#define REG_EMPTY ((uintptr_t)0)
#define REG_TOMB ((uintptr_t)1)

static ng_raw_mutex reg_lock;
static uintptr_t *reg_slots;
static size_t reg_cap, reg_count, reg_tombs;

static size_t reg_hash(uintptr_t key, size_t cap)
{
    uint64_t h = (uint64_t)(key >> NG_MI_SEGMENT_SHIFT) * UINT64_C(0x9e3779b97f4a7c15);
    return (size_t)(h >> 17) & (cap - 1);
}

static bool reg_insert_locked(uintptr_t key)
{
    if ((reg_count + reg_tombs + 1) * 2 > reg_cap) {
        size_t ncap = reg_cap == 0 ? 64 : (reg_count * 4 > reg_cap ? reg_cap * 2 : reg_cap);
        uintptr_t *ns = calloc(ncap, sizeof *ns);
        if (ns == NULL)
            return false;
        for (size_t i = 0; i < reg_cap; i++) {
            uintptr_t k = reg_slots[i];
            if (k == REG_EMPTY || k == REG_TOMB)
                continue;
            size_t j = reg_hash(k, ncap);
            while (ns[j] != REG_EMPTY)
                j = (j + 1) & (ncap - 1);
            ns[j] = k;
        }
        free(reg_slots);
        reg_slots = ns;
        reg_cap = ncap;
        reg_tombs = 0;
    }
    size_t j = reg_hash(key, reg_cap);
    while (reg_slots[j] != REG_EMPTY && reg_slots[j] != REG_TOMB)
        j = (j + 1) & (reg_cap - 1);
    if (reg_slots[j] == REG_TOMB)
        reg_tombs--;
    reg_slots[j] = key;
    reg_count++;
    return true;
}

static size_t reg_find_locked(uintptr_t key)
{
    if (reg_cap == 0)
        return SIZE_MAX;
    size_t j = reg_hash(key, reg_cap);
    for (size_t n = 0; n < reg_cap && reg_slots[j] != REG_EMPTY; n++) {
        if (reg_slots[j] == key)
            return j;
        j = (j + 1) & (reg_cap - 1);
    }
    return SIZE_MAX;
}

#ifdef NG_MI_DEBUG
/* Debug builds: the block starts of the last NG_MI_GONE_HUGE_MAX freed huge blocks whose
 * segments were unmapped (a ring, so memory stays bounded; 0 = empty), under reg_lock. A MEM
 * huge block is unmapped by its free, so without this its second free found no segment and
 * was reported as a foreign pointer. An entry goes when a segment is mapped over it (the
 * address is then a new segment's, checked as such) or when the ring wraps (then its double
 * free is NG_EINVAL again, as for a page given back to its segment). */
static uintptr_t gone_huge[NG_MI_GONE_HUGE_MAX];
static size_t gone_huge_next;

bool ng_mi_registry_gone_huge_locked(const void *p)
{
    for (size_t i = 0; i < NG_MI_GONE_HUGE_MAX; i++)
        if (gone_huge[i] != 0 && gone_huge[i] == (uintptr_t)p)
            return true;
    return false;
}

static void gone_huge_forget_locked(uintptr_t lo, size_t size)
{
    for (size_t i = 0; i < NG_MI_GONE_HUGE_MAX; i++)
        if (gone_huge[i] - lo < size)
            gone_huge[i] = 0;
}
#endif

static void reg_remove(ng_mi_segment *s)
{
    ng_raw_mutex_lock(&reg_lock);
    size_t j = reg_find_locked((uintptr_t)s);
    if (j != SIZE_MAX) {
        reg_slots[j] = REG_TOMB;
        reg_count--;
        reg_tombs++;
    }
#ifdef NG_MI_DEBUG
    /* Read under reg_lock, which every checked free holds while it clears the flag: a free
     * of this block either finished before (flag 0: remembered) or finds no segment after. */
    if (s->kind == NG_MI_SEGMENT_HUGE && s->pages[0].in_use &&
        ng_atomic_load(&ng_mi_segment_debug(s)->huge_live, NG_RELAXED) == 0) {
        gone_huge[gone_huge_next] = (uintptr_t)s->pages[0].start;
        gone_huge_next = (gone_huge_next + 1) % NG_MI_GONE_HUGE_MAX;
    }
#endif
    ng_raw_mutex_unlock(&reg_lock);
}

bool ng_mi_registry_lock_lookup(const ng_mi_segment *s)
{
    ng_raw_mutex_lock(&reg_lock);
    return reg_find_locked((uintptr_t)s) != SIZE_MAX;
}

void ng_mi_registry_unlock(void) { ng_raw_mutex_unlock(&reg_lock); }
void ng_mi_registry_lock_for_fork(void) { ng_raw_mutex_lock(&reg_lock); }

#ifdef NG_MI_DEBUG
void ng_mi_debug_mark_live(ng_mi_page *page, void *p)
{
    ng_mi_segment *s = ng_mi_page_segment(page);
    ng_mi_debug_seg *dbg = ng_mi_segment_debug(s);
    uint64_t old;
    if (s->kind == NG_MI_SEGMENT_HUGE) {
        /* Relaxed: see alloc_internal.h (the block reaches other threads by their own
         * synchronisation with the caller). */
        old = ng_atomic_exchange(&dbg->huge_live, 1, NG_RELAXED);
    }
    else {
        /* A plain read: only the owner allocates, and it (or the reclaim that handed it the
         * segment, under the interpreter lock) published the pointer. */
        uint64_t *live = dbg->live[page - s->pages];
        size_t i = (size_t)((uint8_t *)p - page->start) / page->block_size;
        uint64_t m = (uint64_t)1 << (i & 63);
        old = ng_atomic_fetch_or(&live[i >> 6], m, NG_RELAXED) & m;
    }
    if (old != 0) {
        fprintf(stderr, "nogil allocator bug: block %p handed out while live\n", p);
        abort();
    }
}
#endif

void ng_mi_registry_after_fork(void)
{
    /* Only the forking thread exists: a holder that was cut short by fork is gone. */
    reg_lock = (ng_raw_mutex)NG_RAW_MUTEX_INIT;
}

/* ---- Segment lists ---------------------------------------------------------------------------- */

void ng_mi_seglist_push(ng_mi_segment **head, ng_mi_segment *s)
{
    s->prev = NULL;
    s->next = *head;
    if (*head != NULL)
        (*head)->prev = s;
    *head = s;
}

void ng_mi_seglist_remove(ng_mi_segment **head, ng_mi_segment *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        *head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

/* ---- Geometry --------------------------------------------------------------------------------- */

static size_t header_size(size_t page_count)
{
    size_t h = sizeof(ng_mi_segment) + page_count * sizeof(ng_mi_page);
#ifdef NG_MI_DEBUG
    /* The live-block bookkeeping (alloc_internal.h) follows the page descriptors. */
    h += sizeof(ng_mi_debug_seg) + page_count * sizeof(uint64_t *);
#endif
    return (h + 63) & ~(size_t)63;
}

static void geometry(int seg_kind, size_t *page_count, uint32_t *shift)
{
    switch (seg_kind) {
    case NG_MI_SEGMENT_SMALL:
        *page_count = NG_MI_SEGMENT_SIZE >> NG_MI_SMALL_PAGE_SHIFT;
        *shift = NG_MI_SMALL_PAGE_SHIFT;
        break;
    case NG_MI_SEGMENT_MEDIUM:
        *page_count = NG_MI_SEGMENT_SIZE >> NG_MI_MEDIUM_PAGE_SHIFT;
        *shift = NG_MI_MEDIUM_PAGE_SHIFT;
        break;
    case NG_MI_SEGMENT_LARGE:
        *page_count = 1;
        *shift = NG_MI_SEGMENT_SHIFT;
        break;
    default:
        *page_count = 1;
        *shift = 63;
        break;
    }
}

/* ---- Allocation and release --------------------------------------------------------------------- */

/* A segment the heap owns already. `collapse`: merge its touched 4 KiB pages into huge ones
 * now (os.c); otherwise only later faults get huge pages. */
static void advise_hugepages(ng_mi_interp *mi, ng_mi_segment *s, bool collapse)
{
    if (s->hugepages || !ng_mi_os_advise_hugepages(s, s->size, collapse))
        return;
    s->hugepages = 1;
    ng_atomic_fetch_add(&mi->segments_hugepage, 1, NG_RELAXED); /* statistics */
}

/* Bytes of a segment that blocks have been carved from: the memory the allocator has touched
 * (pages are carved lazily, a few KiB at a time: ng_mi_page_extend). */
static size_t carved_bytes(const ng_mi_segment *s)
{
    size_t n = 0;
    for (uint32_t i = 0; i < s->page_count; i++)
        if (s->pages[i].in_use)
            n += (size_t)s->pages[i].capacity * s->pages[i].block_size;
    return n;
}

/* A segment carved this far is dense: collapsing it into huge pages makes at most a quarter
 * of it resident that was not. */
#define NG_MI_DENSE_BYTES (NG_MI_SEGMENT_SIZE / 4 * 3)
/* Collapses per new segment: each copies up to 4 MiB (about 0.6 ms), in the allocating
 * thread's slow path. */
#define NG_MI_COLLAPSES_PER_MAP 2

/* Whether a segment of seg_kind that heap data hd is about to own should be advised for
 * huge pages (nogil/alloc.h). In auto mode: when hd already owns a dense segment of that
 * kind, whose blocks alone take most of the 1,500 or so entries of a current x86 core's
 * second-level TLB; ng_mi_segment_page_alloc maps a new one only when those are full, so the
 * heap is outgrowing the TLB's reach with 4 KiB pages. Its dense segments of that kind are
 * advised and collapsed then too, NG_MI_COLLAPSES_PER_MAP at a time; sparse ones are left
 * alone (collapsing them would make memory resident that no block uses) and looked at
 * again when the next segment is mapped. */
static bool wants_hugepages(ng_mi_interp *mi, ng_mi_heap_data *hd, int seg_kind)
{
    switch (ng_mi_get_hugepages()) {
    case NG_MI_HUGEPAGES_ALWAYS:
        return seg_kind != NG_MI_SEGMENT_HUGE;
    case NG_MI_HUGEPAGES_AUTO: {
        if (seg_kind != NG_MI_SEGMENT_SMALL && seg_kind != NG_MI_SEGMENT_MEDIUM)
            return false;
        bool dense = false;
        int collapses = 0;
        for (ng_mi_segment *s = hd->segments; s != NULL; s = s->next) {
            if (s->kind != seg_kind || carved_bytes(s) < NG_MI_DENSE_BYTES)
                continue;
            dense = true;
            if (!s->hugepages && collapses < NG_MI_COLLAPSES_PER_MAP) {
                advise_hugepages(mi, s, true);
                collapses++;
            }
        }
        return dense;
    }
    default:
        return false;
    }
}

ng_mi_segment *ng_mi_segment_alloc(ng_mi_heap *heap, int seg_kind, size_t huge_size)
{
    ng_mi_thread *t = heap->thread;
    ng_mi_interp *mi = t->mi;
    ng_mi_heap_data *hd = &t->data[heap->kind];
    bool hugepages = wants_hugepages(mi, hd, seg_kind);
    if (seg_kind == NG_MI_SEGMENT_SMALL && t->cached != NULL) {
        ng_mi_segment *s = t->cached;
        t->cached = NULL;
        s->heap_kind = heap->kind;
        /* Empty, but what its earlier pages touched is still resident: not collapsed, which
         * would make all of it resident. Faults in its untouched 2 MiB ranges get huge pages
         * (khugepaged may merge the rest later). */
        if (hugepages)
            advise_hugepages(mi, s, false);
        ng_mi_seglist_push(&hd->segments, s);
        return s;
    }
    size_t page_count;
    uint32_t shift;
    geometry(seg_kind, &page_count, &shift);
    size_t hdr = header_size(page_count);
    size_t size = NG_MI_SEGMENT_SIZE;
    if (seg_kind == NG_MI_SEGMENT_HUGE) {
        size_t os_page = (size_t)sysconf(_SC_PAGESIZE);
        if (huge_size > SIZE_MAX / 2 - hdr - os_page) {
            errno = ENOMEM;
            return NULL;
        }
        size = (hdr + huge_size + os_page - 1) & ~(os_page - 1);
    }
    ng_mi_segment *s = ng_mi_os_map(size);
    if (s == NULL) {
        NG_MI_COUNT_ADD(hd->c.mmap_failures, 1);
        errno = ENOMEM;
        return NULL;
    }
    /* Before the header below is written: that first touch faults in a huge page already. */
    bool advised = hugepages && ng_mi_os_advise_hugepages(s, size, false);
    /* Fresh anonymous memory is zero: every other field starts at 0/NULL. Relaxed: other
     * threads learn the segment only through blocks handed out later (with their own
     * synchronisation). */
    ng_atomic_store(&s->thread_id, t->thread_id, NG_RELAXED);
    s->page_shift = shift;
    s->kind = (uint8_t)seg_kind;
    s->heap_kind = heap->kind;
    s->size = size;
    s->page_count = (uint32_t)page_count;
    s->owner = t;
    s->cookie = NG_MI_SEGMENT_COOKIE ^ (uint64_t)(uintptr_t)s;
    s->mi = mi;
    s->hugepages = advised;
    for (size_t i = 0; i < page_count; i++) {
        ng_mi_page *pg = &s->pages[i];
        if (seg_kind == NG_MI_SEGMENT_HUGE) {
            pg->start = (uint8_t *)s + hdr;
            pg->area = size - hdr;
        }
        else {
            size_t psize = (size_t)1 << shift;
            pg->start = (uint8_t *)s + i * psize + (i == 0 ? hdr : 0);
            pg->area = psize - (i == 0 ? hdr : 0);
        }
    }
    ng_raw_mutex_lock(&reg_lock);
    bool ok = reg_insert_locked((uintptr_t)s);
#ifdef NG_MI_DEBUG
    if (ok)
        gone_huge_forget_locked((uintptr_t)s, size);
#endif
    ng_raw_mutex_unlock(&reg_lock);
    if (!ok) {
        ng_mi_os_unmap(s, size);
        errno = ENOMEM;
        return NULL;
    }
    ng_mi_interp_lock(mi);
    s->all_prev = NULL;
    s->all_next = mi->all;
    if (mi->all != NULL)
        mi->all->all_prev = s;
    mi->all = s;
    ng_mi_interp_unlock(mi);
    /* Relaxed: statistics. */
    ng_atomic_fetch_add(&mi->segments, 1, NG_RELAXED);
    ng_atomic_fetch_add(&mi->bytes_mapped, size, NG_RELAXED);
    if (advised)
        ng_atomic_fetch_add(&mi->segments_hugepage, 1, NG_RELAXED);
    if (seg_kind != NG_MI_SEGMENT_HUGE)
        ng_mi_seglist_push(&hd->segments, s);
    return s;
}

void ng_mi_segment_unmap(ng_mi_interp *mi, ng_mi_segment *s)
{
    reg_remove(s);
#ifdef NG_MI_DEBUG
    /* Out of the registry (reg_remove waited for any checked free looking at it): the
     * bitmaps of pages still in use (interpreter teardown, abandoned segments) go now. */
    for (uint32_t i = 0; i < s->page_count; i++) {
        free(ng_mi_segment_debug(s)->live[i]);
        ng_mi_segment_debug(s)->live[i] = NULL;
    }
#endif
    ng_mi_interp_lock(mi);
    if (s->all_prev != NULL)
        s->all_prev->all_next = s->all_next;
    else
        mi->all = s->all_next;
    if (s->all_next != NULL)
        s->all_next->all_prev = s->all_prev;
    ng_mi_interp_unlock(mi);
    ng_atomic_fetch_sub(&mi->segments, 1, NG_RELAXED); /* statistics */
    ng_atomic_fetch_sub(&mi->bytes_mapped, s->size, NG_RELAXED);
    if (s->hugepages)
        ng_atomic_fetch_sub(&mi->segments_hugepage, 1, NG_RELAXED);
    ng_mi_os_unmap(s, s->size);
}

void ng_mi_segment_release_empty(ng_mi_thread *t, ng_mi_segment *s)
{
    ng_mi_seglist_remove(&t->data[s->heap_kind].segments, s);
    if (s->kind == NG_MI_SEGMENT_SMALL && t->cached == NULL && !t->abandoning) {
        t->cached = s;
        return;
    }
    ng_mi_segment_unmap(t->mi, s);
}

static int seg_kind_for(size_t block_size)
{
    if (block_size <= NG_MI_SMALL_MAX)
        return NG_MI_SEGMENT_SMALL;
    if (block_size <= NG_MI_MEDIUM_MAX)
        return NG_MI_SEGMENT_MEDIUM;
    return NG_MI_SEGMENT_LARGE;
}

ng_mi_page *ng_mi_segment_page_alloc(ng_mi_heap *heap, size_t bin)
{
    ng_mi_heap_data *hd = ng_mi_heap_data_of(heap);
    size_t block_size = ng_mi_bin_size(bin);
    int sk = seg_kind_for(block_size);
    ng_mi_segment *s = hd->segments;
    while (s != NULL && (s->kind != sk || s->pages_used >= s->page_count))
        s = s->next;
    if (s == NULL) {
        s = ng_mi_segment_alloc(heap, sk, 0);
        if (s == NULL)
            return NULL;
    }
    ng_mi_page *page = NULL;
    for (uint32_t i = 0; i < s->page_count; i++)
        if (!s->pages[i].in_use) {
            page = &s->pages[i];
            break;
        }
    if (page == NULL) { /* cannot happen: pages_used < page_count */
        errno = ENOMEM;
        return NULL;
    }
#ifdef NG_MI_DEBUG
    /* The page's live bitmap (alloc_internal.h). On failure nothing has changed: the page
     * stays free in its (possibly new, empty) owned segment, which later requests reuse. */
    size_t nblocks = page->area / block_size;
    uint64_t *live = calloc((nblocks + 63) / 64, sizeof(uint64_t));
    if (live == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    /* Under the registry lock, as the checked free reads these fields under it: a stray
     * free racing with the page's change of size class reads either state, never a mix. */
    ng_raw_mutex_lock(&reg_lock);
#endif
    s->pages_used++;
    page->in_use = 1;
    ng_mi_page_init(heap, page, bin, block_size);
#ifdef NG_MI_DEBUG
    ng_mi_segment_debug(s)->live[page - s->pages] = live;
    ng_raw_mutex_unlock(&reg_lock);
#endif
    return page;
}

void ng_mi_segment_page_free(ng_mi_page *page)
{
    ng_mi_segment *s = ng_mi_page_segment(page);
#ifdef NG_MI_DEBUG
    /* Withdrawn under the registry lock (see ng_mi_segment_page_alloc): a checked free of a
     * block of this page either finished with the bitmap or finds the page not in use. */
    ng_raw_mutex_lock(&reg_lock);
    uint64_t *live = ng_mi_segment_debug(s)->live[page - s->pages];
    ng_mi_segment_debug(s)->live[page - s->pages] = NULL;
#endif
    page->free = page->local_free = NULL;
    page->used = 0;
    page->flags = 0;
    page->block_size = 0;
    /* Relaxed: an empty page has no block another thread may free (only a double free
     * would race: undefined in release builds; in NG_MI_DEBUG builds the checked free reads
     * the page under the registry lock held here, and never this word once it failed). */
    ng_atomic_store(&page->thread_free, 0, NG_RELAXED);
    ng_atomic_store(&page->heap, NULL, NG_RELAXED);
    page->prev = page->next = NULL;
    page->qsbr_goal = 0;
    page->capacity = page->reserved = 0;
    page->in_use = 0;
    page->retire_expire = 0;
    page->bin = 0;
    page->reserved_flags = 0;
#ifdef NG_MI_DEBUG
    ng_raw_mutex_unlock(&reg_lock);
    free(live);
#endif
    s->pages_used--;
    if (s->pages_used == 0 && s->owner != NULL && !s->owner->abandoning)
        ng_mi_segment_release_empty(s->owner, s);
}
