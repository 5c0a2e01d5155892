/* The page allocator (nogil/alloc.h): size classes, free lists, huge blocks, out-of-memory
 * injection, misuse, heap walking. QSBR gating is in test_alloc_qsbr.c, thread exit, reclaim
 * and fork in test_alloc_threads.c. */
#define _GNU_SOURCE

#include "alloc_helpers.h"

/* ==== Size classes ========================================================================== */

static size_t class_size_of(ng_mi_heap *h, size_t size, size_t *prev_class, bool *ok)
{
    void *p = ng_mi_heap_malloc(h, size);
    if (p == NULL) {
        *ok = false;
        return 0;
    }
    size_t u = ng_mi_usable_size(p);
    size_t align = u & (~u + 1); /* largest power of two dividing u */
    if (align > 16)
        align = 16;
    if (u < size || u < *prev_class || ((uintptr_t)p & (align - 1)) != 0)
        *ok = false;
    if (size <= NG_MI_LARGE_MAX && u > 64 && u % 16 != 0)
        *ok = false;
    /* Spacing: a class wastes at most a quarter of its size above 64 bytes. */
    if (size > 64 && size <= NG_MI_LARGE_MAX && (u - size) * 4 > u)
        *ok = false;
    *prev_class = u;
    CHECK_STATUS(ng_mi_free(p), NG_OK);
    return u;
}

TEST(alloc_size_classes_cover_every_size_monotonically_and_aligned)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    size_t prev = 0;
    bool ok = true;
    for (size_t s = 0; s <= 2048 && ok; s++)
        class_size_of(mem, s, &prev, &ok);
    CHECK(ok);
    for (size_t s = 2049; s <= NG_MI_LARGE_MAX && ok; s += s / 64 + 7)
        class_size_of(mem, s, &prev, &ok);
    class_size_of(mem, NG_MI_LARGE_MAX, &prev, &ok);
    CHECK(ok);
    CHECK_EQ(prev, NG_MI_LARGE_MAX);
    /* Size 0: a unique block of the smallest class. */
    void *a = ng_mi_heap_malloc(mem, 0), *b = ng_mi_heap_malloc(mem, 0);
    CHECK(a != NULL && b != NULL && a != b);
    CHECK_EQ(ng_mi_usable_size(a), 8);
    ng_mi_free(a);
    ng_mi_free(b);
    CHECK_EQ(ng_mi_usable_size(NULL), 0);

    /* Object heaps: at least prefix + 8 bytes. */
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    ng_mi_heap *gcpre = alloc_heap(ts, NG_MI_HEAP_GC_PRE);
    REQUIRE(obj != NULL && gcpre != NULL);
    for (size_t s = 0; s <= 64; s++) {
        void *p = ng_mi_heap_malloc(obj, s), *q = ng_mi_heap_malloc(gcpre, s);
        REQUIRE(p != NULL && q != NULL);
        CHECK_GE(ng_mi_usable_size(p), NG_MI_OBJECT_PREFIX + 8);
        CHECK_GE(ng_mi_usable_size(q), NG_MI_GC_PRE_PREFIX + 8);
        CHECK_GE(ng_mi_usable_size(p), s);
        ng_mi_free(p);
        ng_mi_free(q);
    }
    end_scene(in, ts);
}

typedef struct live_block {
    void *p;
    size_t size;
} live_block;

TEST(alloc_blocks_of_random_sizes_never_overlap)
{
    TSTATE_SCENE(in, ts);
    ng_mi_heap *heaps[NG_MI_HEAP_COUNT];
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        heaps[k] = alloc_heap(ts, (ng_mi_heap_kind)k);
        REQUIRE(heaps[k] != NULL);
    }
    size_t n = ALLOC_SCALED(20000);
    live_block *blocks = calloc(n, sizeof *blocks);
    REQUIRE(blocks != NULL);
    uint64_t rng = 0x1234567;
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < n; i++) {
            if (blocks[i].p != NULL && rng_next(&rng) % 2 == 0)
                continue;
            if (blocks[i].p != NULL) {
                CHECK(alloc_check(blocks[i].p, 0, blocks[i].size, (uint32_t)i));
                CHECK_STATUS(ng_mi_free(blocks[i].p), NG_OK);
            }
            uint64_t r = rng_next(&rng);
            size_t size = (r % 100 == 0) ? (size_t)(r >> 20) % 200000 : (size_t)(r >> 20) % 600;
            ng_mi_heap *h = heaps[(r >> 8) % NG_MI_HEAP_COUNT];
            blocks[i].p = ng_mi_heap_malloc(h, size);
            blocks[i].size = size;
            REQUIRE(blocks[i].p != NULL);
            alloc_fill(blocks[i].p, 0, size, (uint32_t)i);
        }
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += !alloc_check(blocks[i].p, 0, blocks[i].size, (uint32_t)i);
        CHECK_EQ(bad, 0);
    }
    for (size_t i = 0; i < n; i++)
        CHECK_STATUS(ng_mi_free(blocks[i].p), NG_OK);
    free(blocks);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        CHECK_STATUS(ng_mi_heap_collect(heaps[k], false), NG_OK);
        ng_mi_stats st = alloc_heap_stats(heaps[k]);
        CHECK_EQ(st.blocks_in_use, 0);
        CHECK_EQ(st.pages_in_use, 0);
    }
    end_scene(in, ts);
}

TEST(alloc_large_and_huge_blocks_are_usable_and_unmapped_when_freed)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    ng_mi_stats before = alloc_interp_stats(in);
    size_t sizes[] = {200 * 1024, NG_MI_LARGE_MAX, 3u << 20, 64u << 20};
    void *p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = ng_mi_heap_malloc(mem, sizes[i]);
        REQUIRE(p[i] != NULL);
        CHECK_GE(ng_mi_usable_size(p[i]), sizes[i]);
        CHECK_EQ((uintptr_t)p[i] % 16, 0);
        /* Touch the first and last page only: 64 MiB of pattern would be slow. */
        alloc_fill(p[i], 0, 4096, 7);
        alloc_fill(p[i], sizes[i] - 4096, sizes[i], 7);
    }
    ng_mi_stats during = alloc_heap_stats(mem);
    CHECK_EQ(during.huge_blocks, 2);
    CHECK_GE(during.bytes_mapped, (uint64_t)(67u << 20));
    ng_mi_stats mid = alloc_interp_stats(in);
    CHECK_GE(mid.segments, before.segments + 3);
    for (int i = 0; i < 4; i++) {
        CHECK(alloc_check(p[i], 0, 4096, 7));
        CHECK(alloc_check(p[i], sizes[i] - 4096, sizes[i], 7));
        CHECK_STATUS(ng_mi_free(p[i]), NG_OK);
    }
    CHECK_STATUS(ng_mi_heap_collect(mem, false), NG_OK);
    ng_mi_stats after = alloc_interp_stats(in);
    CHECK_EQ(after.segments, before.segments);
    CHECK_EQ(after.bytes_mapped, before.bytes_mapped);
    CHECK_EQ(alloc_heap_stats(mem).huge_blocks, 0);
    end_scene(in, ts);
}

static bool realloc_kept(const uint8_t *r, int n)
{
    for (int i = 0; i < n; i++)
        if (r[i] != (uint8_t)(i * 7 + 3))
            return false;
    return true;
}

TEST(alloc_calloc_zeroes_and_realloc_keeps_contents)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    /* A reused block is dirty; calloc must clear it anyway. */
    void *d = ng_mi_heap_malloc(mem, 100);
    REQUIRE(d != NULL);
    memset(d, 0xAB, 100);
    ng_mi_free(d);
    uint8_t *z = ng_mi_heap_calloc(mem, 10, 10);
    REQUIRE(z != NULL);
    bool zero = true;
    for (int i = 0; i < 100; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    errno = 0;
    CHECK(ng_mi_heap_calloc(mem, SIZE_MAX / 2, 3) == NULL);
    CHECK_EQ(errno, ENOMEM);
    uint8_t *r = ng_mi_heap_realloc(mem, NULL, 50);
    REQUIRE(r != NULL);
    for (int i = 0; i < 50; i++)
        r[i] = (uint8_t)(i * 7 + 3);
    r = ng_mi_heap_realloc(mem, r, 5000);
    REQUIRE(r != NULL);
    CHECK(realloc_kept(r, 50));
    r = ng_mi_heap_realloc(mem, r, 5 << 20); /* to a huge block */
    REQUIRE(r != NULL);
    CHECK(realloc_kept(r, 50));
    r = ng_mi_heap_realloc(mem, r, 40);
    REQUIRE(r != NULL);
    CHECK(realloc_kept(r, 40));
    CHECK_STATUS(ng_mi_free(r), NG_OK);
    CHECK_STATUS(ng_mi_free(z), NG_OK);
    end_scene(in, ts);
}

/* ==== Free lists ============================================================================= */

TEST(alloc_local_free_is_reused_by_the_owner)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    void *keep = ng_mi_heap_malloc(mem, 48); /* the page stays in use */
    void *ps[64];
    for (int i = 0; i < 64; i++)
        ps[i] = ng_mi_heap_malloc(mem, 48);
    for (int i = 0; i < 64; i++)
        ng_mi_free(ps[i]);
    ng_mi_stats st = alloc_heap_stats(mem);
    CHECK_EQ(st.blocks_in_use, 1);
    /* The freed blocks come back (local_free -> free once the free list runs out). */
    int reused = 0;
    void *qs[200];
    for (int i = 0; i < 200; i++) {
        qs[i] = ng_mi_heap_malloc(mem, 48);
        for (int j = 0; j < 64; j++)
            reused += qs[i] == ps[j];
    }
    CHECK_EQ(reused, 64);
    for (int i = 0; i < 200; i++)
        ng_mi_free(qs[i]);
    ng_mi_free(keep);
    end_scene(in, ts);
}

typedef struct xfree_arg {
    void **blocks;
    size_t from, to;
    ng_interp *in;
    bool with_state;
} xfree_arg;

static void *xfree_main(void *p)
{
    xfree_arg *a = p;
    ng_tstate *ts = NULL;
    if (a->with_state)
        ts = attached_state(a->in);
    for (size_t i = a->from; i < a->to; i++)
        CHECK_STATUS(ng_mi_free(a->blocks[i]), NG_OK);
    if (ts != NULL)
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_cross_thread_frees_are_collected_and_reused)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    enum { N = 4000, T = 4 };
    void **blocks = calloc(N, sizeof *blocks);
    REQUIRE(blocks != NULL);
    void *keep = ng_mi_heap_malloc(mem, 32);
    for (int i = 0; i < N; i++) {
        blocks[i] = ng_mi_heap_malloc(mem, 32);
        REQUIRE(blocks[i] != NULL);
        alloc_fill(blocks[i], 0, 32, 1);
    }
    ng_mi_stats before = alloc_heap_stats(mem);
    pthread_t th[T];
    xfree_arg args[T];
    for (int t = 0; t < T; t++) {
        args[t] = (xfree_arg){blocks, (size_t)t * N / T, (size_t)(t + 1) * N / T, in, t % 2 == 0};
        th[t] = spawn_thread(xfree_main, &args[t]);
    }
    for (int t = 0; t < T; t++)
        join_thread(th[t]);
    /* Not collected yet: still counted. */
    CHECK_EQ(alloc_heap_stats(mem).blocks_in_use, N + 1);
    CHECK_STATUS(ng_mi_heap_collect(mem, false), NG_OK);
    CHECK_EQ(alloc_heap_stats(mem).blocks_in_use, 1);
    /* The owner reuses those blocks instead of mapping more. */
    int reused = 0;
    for (int i = 0; i < N; i++) {
        void *p = ng_mi_heap_malloc(mem, 32);
        REQUIRE(p != NULL);
        ng_mi_page *pg = alloc_page_of(p);
        reused += pg->capacity > 0;
        blocks[i] = p;
    }
    CHECK_EQ(reused, N);
    CHECK_LE(alloc_heap_stats(mem).bytes_mapped, before.bytes_mapped);
    for (int i = 0; i < N; i++)
        ng_mi_free(blocks[i]);
    ng_mi_free(keep);
    free(blocks);
    end_scene(in, ts);
}

TEST(alloc_full_page_learns_about_foreign_frees)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    size_t size = 1024;
    void *first = ng_mi_heap_malloc(mem, size);
    REQUIRE(first != NULL);
    ng_mi_page *page = alloc_page_of(first);
    size_t n = page->reserved;
    void **blocks = calloc(n + 1, sizeof *blocks);
    REQUIRE(blocks != NULL);
    blocks[0] = first;
    for (size_t i = 1; i < n; i++) {
        blocks[i] = ng_mi_heap_malloc(mem, size);
        REQUIRE(alloc_page_of(blocks[i]) == page);
    }
    /* Fill more pages until a scan parks ours in the full queue, and go on until the page
     * serving then is exhausted too (every block carved and handed out), so that every page
     * of the class is, and only a block freed into ours can serve next (a page leaving the
     * full queue goes to the back of its bin, behind any page with blocks to hand out). */
    size_t n2 = 16 * n;
    void **more = calloc(n2, sizeof *more);
    REQUIRE(more != NULL);
    size_t extra = 0;
    while (extra < n2 && !(page->flags & NG_MI_PAGE_IN_FULL)) {
        more[extra] = ng_mi_heap_malloc(mem, size);
        REQUIRE(more[extra] != NULL);
        CHECK(alloc_page_of(more[extra]) != page);
        extra++;
    }
    REQUIRE(page->flags & NG_MI_PAGE_IN_FULL);
    for (ng_mi_page *last = alloc_page_of(more[extra - 1]);
         (last->free != NULL || last->capacity < last->reserved) && extra < n2;)
        more[extra++] = ng_mi_heap_malloc(mem, size);
    n2 = extra;
    xfree_arg a = {blocks, 0, n, in, false};
    alloc_run_thread(xfree_main, &a);
    ng_mi_stats before = alloc_heap_stats(mem);
    /* No collect: the slow path must learn from the delayed-free notification. */
    for (size_t i = 0; i < n; i++) {
        blocks[i] = ng_mi_heap_malloc(mem, size);
        REQUIRE(blocks[i] != NULL);
        CHECK(alloc_page_of(blocks[i]) == page);
    }
    CHECK_EQ(alloc_heap_stats(mem).segments, before.segments);
    CHECK(!(page->flags & NG_MI_PAGE_IN_FULL) || page->free == NULL);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(blocks[i]);
    for (size_t i = 0; i < n2; i++)
        ng_mi_free(more[i]);
    free(blocks);
    free(more);
    end_scene(in, ts);
}

/* Blocks of one size from one heap, kept (in allocation order) until the test frees them. */
#define KEPT_MAX 4096
typedef struct kept_blocks {
    ng_mi_heap *heap;
    size_t size, n;
    void *b[KEPT_MAX];
} kept_blocks;

static kept_blocks kept;

/* The next block, kept; NULL when the set is full or memory ran out. */
static void *keep_block(kept_blocks *k)
{
    if (k->n == KEPT_MAX)
        return NULL;
    void *p = ng_mi_heap_malloc(k->heap, k->size);
    if (p != NULL)
        k->b[k->n++] = p;
    return p;
}

/* keep_block until a block comes from a page other than `page`: returns that block. */
static void *keep_until_off(kept_blocks *k, const ng_mi_page *page)
{
    void *p;
    do
        p = keep_block(k);
    while (p != NULL && alloc_page_of(p) == page);
    return p;
}

static void free_kept(kept_blocks *k)
{
    for (size_t i = 0; i < k->n; i++)
        if (k->b[i] != NULL)
            ng_mi_free(k->b[i]);
    k->n = 0;
}

/* The scene of the rotation tests: a page `a` of 1 KiB blocks handed out entirely (so, alone
 * in its bin, in the full queue), and the first block of the page `b` after it. */
static void *two_pages(ng_mi_heap *h, ng_mi_page **a, ng_mi_page **b)
{
    kept = (kept_blocks){.heap = h, .size = 1024};
    void *p = keep_block(&kept);
    if (p == NULL)
        return NULL;
    *a = alloc_page_of(p);
    p = keep_until_off(&kept, *a);
    if (p != NULL)
        *b = alloc_page_of(p);
    return p;
}

static bool rotated(const ng_mi_page *page) { return page->reserved_flags & NG_MI_PF_ROTATED; }

TEST(alloc_exhausted_page_goes_round_its_bin_once_then_to_the_full_queue)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);

    /* A lone page that runs out has nothing to go round to: the full queue at once. */
    ng_mi_page *a, *b;
    void *p = two_pages(mem, &a, &b);
    REQUIRE(p != NULL);
    CHECK(a->flags & NG_MI_PAGE_IN_FULL);
    CHECK(!rotated(a));

    /* One block of a comes back: a leaves the full queue for the back of the bin. Once b
     * runs out, b goes round behind a (not to the full queue) and a serves. */
    ng_mi_free(kept.b[0]);
    void *a_block = kept.b[0];
    kept.b[0] = NULL;
    CHECK(!(a->flags & NG_MI_PAGE_IN_FULL));
    p = keep_until_off(&kept, b);
    REQUIRE(p != NULL);
    CHECK_PTR_EQ(p, a_block);
    CHECK(rotated(b));
    CHECK(!(b->flags & NG_MI_PAGE_IN_FULL));
    CHECK_PTR_EQ(ng_mi_heap_data_of(mem)->bins[a->bin].first, a);

    /* The owner's free into b takes the inline path (its flags are 0): local_free. */
    void *b_block = kept.b[kept.n - 2];
    REQUIRE(alloc_page_of(b_block) == b);
    kept.b[kept.n - 2] = NULL;
    ng_mi_free(b_block);
    CHECK_PTR_EQ(b->local_free, b_block);
    CHECK_EQ(b->flags, 0);

    /* a runs out: round it goes, and b, come round, serves the block it got back; serving
     * clears its mark. */
    p = keep_block(&kept);
    CHECK_PTR_EQ(p, b_block);
    CHECK(rotated(a));
    CHECK(!rotated(b));
    CHECK(!(a->flags & NG_MI_PAGE_IN_FULL));

    /* b runs out and goes round; a, still exhausted when it comes round, goes to the full
     * queue, and so does b: a new page serves. */
    p = keep_block(&kept);
    REQUIRE(p != NULL);
    CHECK(alloc_page_of(p) != a && alloc_page_of(p) != b);
    CHECK(a->flags & NG_MI_PAGE_IN_FULL);
    CHECK(b->flags & NG_MI_PAGE_IN_FULL);
    CHECK(!rotated(a) && !rotated(b));

    free_kept(&kept);
    end_scene(in, ts);
}

TEST(alloc_rotated_page_loses_its_mark_when_the_slow_path_takes_its_frees)
{
    /* A page sent round its bin that becomes the bin's first page again (the page ahead of it
     * emptied and left) serves through the slow path's quick take of the first page's frees:
     * that counts as serving, so its next exhaustion sends it round again rather than
     * straight to the full queue. */
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    ng_mi_page *a, *b;
    void *p = two_pages(mem, &a, &b);
    REQUIRE(p != NULL);
    ng_mi_free(kept.b[0]); /* a leaves the full queue */
    kept.b[0] = NULL;
    p = keep_until_off(&kept, b);
    REQUIRE(p != NULL && alloc_page_of(p) == a);
    REQUIRE(rotated(b));

    /* a empties and goes back to its segment: b, still marked, is the bin's first page. */
    for (size_t i = 0; i < kept.n; i++)
        if (kept.b[i] != NULL && alloc_page_of(kept.b[i]) == a) {
            ng_mi_free(kept.b[i]);
            kept.b[i] = NULL;
        }
    REQUIRE(ng_mi_heap_data_of(mem)->bins[b->bin].first == b);
    void *back = NULL;
    for (size_t i = kept.n; back == NULL && i-- > 0;)
        if (kept.b[i] != NULL && alloc_page_of(kept.b[i]) == b) {
            back = kept.b[i];
            kept.b[i] = NULL;
        }
    REQUIRE(back != NULL);
    ng_mi_free(back);
    p = keep_block(&kept);
    CHECK_PTR_EQ(p, back);
    CHECK(!rotated(b));

    free_kept(&kept);
    end_scene(in, ts);
}

/* ==== Out of memory ============================================================================ */

TEST(alloc_mmap_failure_returns_enomem_and_recovers)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    ng_mi_stats before = alloc_interp_stats(in);
    size_t sizes[] = {24, 4000, 100000, 1u << 20, 8u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        ng_atomic_store(&ng_mi_test_fail_mmap, 1, NG_SEQ_CST);
        errno = 0;
        void *p = ng_mi_heap_malloc(obj, sizes[i]);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
        CHECK_EQ(ng_atomic_load(&ng_mi_test_fail_mmap, NG_SEQ_CST), 0);
    }
    ng_mi_stats failed = alloc_interp_stats(in);
    CHECK_EQ(failed.mmap_failures, before.mmap_failures + 5);
    CHECK_EQ(failed.segments, before.segments);
    CHECK_EQ(alloc_heap_stats(obj).mmap_failures, 5);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = ng_mi_heap_malloc(obj, sizes[i]);
        CHECK(p != NULL);
        ng_mi_free(p);
    }
    end_scene(in, ts);
}

/* ==== Misuse =================================================================================== */

static void *heap_of_other_thread(void *p)
{
    ng_mi_heap *h = (ng_mi_heap *)1;
    CHECK_STATUS(ng_mi_heap_of((ng_tstate *)p, NG_MI_HEAP_MEM, &h), NG_EWRONGTHREAD);
    return NULL;
}

static bool count_block(void *block, size_t size, void *arg)
{
    (*(size_t *)arg)++;
    return true;
}

typedef struct visit_arg {
    ng_mi_heap *heap;
    ng_interp *in;
} visit_arg;

static void *visit_without_stop(void *p)
{
    visit_arg *a = p;
    size_t n = 0;
    CHECK_STATUS(ng_mi_heap_visit(a->heap, count_block, &n), NG_EWRONGTHREAD);
    ng_mi_stats st;
    CHECK_STATUS(ng_mi_heap_get_stats(a->heap, &st), NG_EWRONGTHREAD);
    CHECK_STATUS(ng_mi_heap_collect(a->heap, false), NG_EWRONGTHREAD);
    CHECK_STATUS(ng_mi_abandoned_visit(a->in, NG_MI_HEAP_OBJECT, count_block, &n), NG_ESTATE);
    return NULL;
}

TEST(alloc_misuse_gets_a_status)
{
    TSTATE_SCENE(in, ts);
    ng_mi_heap *h = NULL;
    CHECK_STATUS(ng_mi_heap_of(NULL, NG_MI_HEAP_MEM, &h), NG_EINVAL);
    CHECK_STATUS(ng_mi_heap_of(ts, (ng_mi_heap_kind)4, &h), NG_EINVAL);
    CHECK_STATUS(ng_mi_heap_of(ts, (ng_mi_heap_kind)-1, &h), NG_EINVAL);
    CHECK_STATUS(ng_mi_heap_of(ts, NG_MI_HEAP_MEM, NULL), NG_EINVAL);
    alloc_run_thread(heap_of_other_thread, ts);
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(obj != NULL);
    visit_arg va = {obj, in};
    alloc_run_thread(visit_without_stop, &va);
    CHECK_STATUS(ng_mi_heap_visit(NULL, count_block, NULL), NG_EINVAL);
    CHECK_STATUS(ng_mi_heap_visit(obj, NULL, NULL), NG_EINVAL);
    CHECK_STATUS(ng_mi_interp_get_stats(NULL, NULL), NG_EINVAL);

    /* Checked frees: foreign, interior, double. */
    int on_stack = 0;
    CHECK_STATUS(ng_mi_free_checked(&on_stack), NG_EINVAL);
    void *m = malloc(64);
    CHECK_STATUS(ng_mi_free_checked(m), NG_EINVAL);
    free(m);
    CHECK_STATUS(ng_mi_free_checked(NULL), NG_OK);
    char *p = ng_mi_heap_malloc(obj, 64);
    char *q = ng_mi_heap_malloc(obj, 64);
    REQUIRE(p != NULL && q != NULL);
    CHECK_STATUS(ng_mi_free_checked(p + 8), NG_EINVAL);
    CHECK_STATUS(ng_mi_free_checked(p), NG_OK);
    CHECK_STATUS(ng_mi_free_checked(p), NG_ESTATE);
    /* A never-carved block of the page is not ours to free either. */
    ng_mi_page *pg = alloc_page_of(q);
    if (pg->capacity < pg->reserved)
        CHECK_STATUS(ng_mi_free_checked(pg->start + (size_t)pg->capacity * pg->block_size),
                     NG_EINVAL);
    char *huge = ng_mi_heap_malloc(obj, 5u << 20);
    REQUIRE(huge != NULL);
    CHECK_STATUS(ng_mi_free_checked(huge + 16), NG_EINVAL);
    CHECK_STATUS(ng_mi_free_checked(huge), NG_OK);
    CHECK_STATUS(ng_mi_free_checked(huge), NG_ESTATE); /* gated: still mapped, known freed */
    CHECK_STATUS(ng_mi_free_checked(q), NG_OK);

    /* A released state. */
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_mi_heap_of(ts, NG_MI_HEAP_MEM, &h), NG_ERELEASED);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_STATUS(ng_mi_interp_get_stats(in, &(ng_mi_stats){0}), NG_ERELEASED);
}

/* ==== Walking ==================================================================================== */

typedef struct live_set {
    void **blocks;
    size_t n;
    size_t seen, unknown, dup;
    uint8_t *hit;
} live_set;

static bool visit_live(void *block, size_t size, void *arg)
{
    live_set *s = arg;
    for (size_t i = 0; i < s->n; i++)
        if (s->blocks[i] == block) {
            s->dup += s->hit[i];
            s->hit[i] = 1;
            s->seen++;
            return true;
        }
    s->unknown++;
    return true;
}

static void reset_live(live_set *s)
{
    memset(s->hit, 0, s->n);
    s->seen = s->unknown = s->dup = 0;
}

typedef struct stw_visit_arg {
    ng_interp *in;
    ng_mi_heap *heap;
    live_set *set;
    int rc_visit, rc_abandoned, rc_stats;
} stw_visit_arg;

static void *stw_visitor(void *p)
{
    stw_visit_arg *a = p;
    CHECK_STATUS(ng_stop_the_world(a->in, NULL), NG_OK);
    a->rc_visit = ng_mi_heap_visit(a->heap, visit_live, a->set);
    ng_mi_stats st;
    a->rc_stats = ng_mi_heap_get_stats(a->heap, &st);
    size_t n = 0;
    a->rc_abandoned = ng_mi_abandoned_visit(a->in, NG_MI_HEAP_GC, count_block, &n);
    CHECK_STATUS(ng_start_the_world(a->in), NG_OK);
    return NULL;
}

TEST(alloc_visit_finds_exactly_the_live_blocks)
{
    ALLOC_SCENE(in, ts, gc, NG_MI_HEAP_GC);
    enum { N = 3000 };
    void *all[N];
    live_set s = {calloc(N, sizeof(void *)), 0, 0, 0, 0, calloc(N, 1)};
    REQUIRE(s.blocks != NULL && s.hit != NULL);
    uint64_t rng = 99;
    for (int i = 0; i < N; i++) {
        size_t size = (i % 50 == 0) ? 3000 : 16 + rng_next(&rng) % 300;
        if (i == N - 1)
            size = 3u << 20; /* a huge one too */
        all[i] = ng_mi_heap_malloc(gc, size);
        REQUIRE(all[i] != NULL);
    }
    /* Free a third locally and a third from another thread. */
    void *foreign[N];
    size_t nforeign = 0;
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            ng_mi_free(all[i]);
        else if (i % 3 == 1)
            foreign[nforeign++] = all[i];
        else
            s.blocks[s.n++] = all[i];
    }
    xfree_arg fa = {foreign, 0, nforeign, in, false};
    alloc_run_thread(xfree_main, &fa);
    /* The owner collects first: exactly the kept blocks. */
    CHECK_STATUS(ng_mi_heap_visit(gc, visit_live, &s), NG_OK);
    CHECK_EQ(s.seen, s.n);
    CHECK_EQ(s.unknown, 0);
    CHECK_EQ(s.dup, 0);
    /* Another thread, under stop-the-world, with foreign frees not yet collected. */
    void *foreign2[N];
    size_t n2 = 0;
    for (size_t i = 0; i < s.n; i += 2)
        foreign2[n2++] = s.blocks[i];
    xfree_arg fb = {foreign2, 0, n2, in, false};
    alloc_run_thread(xfree_main, &fb);
    reset_live(&s);
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    stw_visit_arg va = {in, gc, &s, -1, -1, -1};
    alloc_run_thread(stw_visitor, &va);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    CHECK_STATUS(va.rc_visit, NG_OK);
    CHECK_STATUS(va.rc_stats, NG_OK);
    CHECK_STATUS(va.rc_abandoned, NG_OK);
    CHECK_EQ(s.seen, s.n); /* uncollected foreign frees still count as live */
    CHECK_EQ(s.unknown, 0);
    /* The owner again: those are gone now. */
    reset_live(&s);
    CHECK_STATUS(ng_mi_heap_visit(gc, visit_live, &s), NG_OK);
    CHECK_EQ(s.seen, s.n - n2);
    CHECK_EQ(s.unknown, 0);
    for (size_t i = 1; i < s.n; i += 2)
        ng_mi_free(s.blocks[i]);
    free(s.blocks);
    free(s.hit);
    end_scene(in, ts);
}

/* ==== The slow path ========================================================================== */

/* The slow path finds a request's size class in a table for the sizes direct[] serves: every
 * size up to NG_MI_DIRECT_MAX gets the class ng_mi_heap_bin gives, in every heap kind. */
TEST(alloc_slow_path_size_classes_match_the_bin_function)
{
    ALLOC_SCENE(in, ts, first, NG_MI_HEAP_MEM); /* the first heap fills the tables */
    (void)first;
    size_t bad = 0;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        for (size_t s = 0; s <= NG_MI_DIRECT_MAX; s++)
            bad += ng_mi_direct_bin[k][(s + 7) >> 3] != ng_mi_heap_bin(k, s);
    CHECK_EQ(bad, 0);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        ng_mi_heap *h = alloc_heap(ts, (ng_mi_heap_kind)k);
        REQUIRE(h != NULL);
        for (size_t s = 0; s <= NG_MI_DIRECT_MAX; s++) {
            void *p = ng_mi_heap_malloc_generic(h, s);
            REQUIRE(p != NULL);
            bad += ng_mi_usable_size(p) != ng_mi_bin_size(ng_mi_heap_bin(k, s));
            CHECK_STATUS(ng_mi_free(p), NG_OK);
        }
    }
    CHECK_EQ(bad, 0);
    end_scene(in, ts);
}

static void *free_one_main(void *p)
{
    CHECK_STATUS(ng_mi_free(p), NG_OK);
    return NULL;
}

/* A miss of the inline path on a page whose free list ran dry takes that page's own frees and
 * other threads' frees (the common miss, handled before the bin scan): they are handed out
 * again, each once, without carving new blocks, both lists are empty after it, and direct[]
 * still points at the page. */
TEST(alloc_miss_takes_the_first_pages_local_and_foreign_frees)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    enum { OWN = 3, MAX = 4096 };
    void **blocks = calloc(MAX, sizeof *blocks);
    REQUIRE(blocks != NULL);
    blocks[0] = ng_mi_heap_malloc(h, 64);
    REQUIRE(blocks[0] != NULL);
    ng_mi_page *page = alloc_page_of(blocks[0]);
    size_t n = 1;
    while (page->free != NULL && n < MAX)
        blocks[n++] = ng_mi_heap_malloc(h, 64);
    REQUIRE(page->free == NULL && n > OWN + 1 && page->capacity < page->reserved);
    for (size_t i = 0; i < n; i++)
        REQUIRE(alloc_page_of(blocks[i]) == page);
    uint32_t capacity = page->capacity;
    for (int i = 0; i < OWN; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    alloc_run_thread(free_one_main, blocks[OWN]);
    REQUIRE((ng_atomic_load(&page->thread_free, NG_RELAXED) & ~NG_MI_DELAY_MASK) != 0);

    void *again[OWN + 1];
    again[0] = ng_mi_heap_malloc(h, 64);
    CHECK(page->local_free == NULL);
    CHECK_EQ(ng_atomic_load(&page->thread_free, NG_RELAXED) & ~NG_MI_DELAY_MASK, 0);
    CHECK_PTR_EQ(h->direct[(64 + 7) >> 3], page);
    for (int i = 1; i <= OWN; i++)
        again[i] = ng_mi_heap_malloc(h, 64);
    int found = 0;
    for (int i = 0; i <= OWN; i++)
        for (int j = 0; j <= OWN; j++)
            found += again[i] == blocks[j];
    CHECK_EQ(found, OWN + 1);
    CHECK_EQ(page->capacity, capacity);
    CHECK_EQ(page->used, n);
    for (int i = 0; i <= OWN; i++)
        blocks[i] = again[i];
    for (size_t i = 0; i < n; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    free(blocks);
    end_scene(in, ts);
}
