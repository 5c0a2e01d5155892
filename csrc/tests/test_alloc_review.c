/* Page allocator regressions found in review: each test failed before its fix. */
#include "alloc_helpers.h"

/* A request near SIZE_MAX must fail with ENOMEM. The huge path rounded the size up to 16
 * bytes first, which wrapped to 0, and handed out a one-OS-page "block" for it. */
TEST(alloc_review_huge_size_overflow_returns_enomem)
{
    ng_interp *in = alloc_interp_new();
    REQUIRE(in != NULL);
    ng_tstate *ts = alloc_state_attached(in);
    REQUIRE(ts != NULL);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(mem != NULL && obj != NULL);
    size_t sizes[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 8, SIZE_MAX - 15, SIZE_MAX / 2 + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        errno = 0;
        void *p = ng_mi_heap_malloc(mem, sizes[i]);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
        if (p != NULL)
            ng_mi_free(p);
        errno = 0;
        p = ng_mi_heap_malloc(obj, sizes[i]);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
        if (p != NULL)
            ng_mi_free(p);
        errno = 0;
        p = ng_mi_heap_calloc(mem, 1, sizes[i]);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
        if (p != NULL)
            ng_mi_free(p);
    }
    void *q = ng_mi_heap_malloc(mem, 100);
    REQUIRE(q != NULL);
    errno = 0;
    CHECK(ng_mi_heap_realloc(mem, q, SIZE_MAX - 3) == NULL);
    CHECK_EQ(errno, ENOMEM);
    ng_mi_free(q);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* Freed huge blocks of an object heap wait for a QSBR goal. A thread that only allocates and
 * frees huge objects, reporting quiescent states as an interpreter loop does, must get their
 * memory back: the goal has to be one that reports reach (not a write sequence nobody ever
 * advances to) and allocation has to notice it. */
TEST(alloc_review_huge_object_frees_do_not_pile_up)
{
    ng_interp *in = alloc_interp_new();
    REQUIRE(in != NULL);
    ng_tstate *ts = alloc_state_attached(in);
    REQUIRE(ts != NULL);
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(obj != NULL);
    uint64_t base = alloc_interp_stats(in).bytes_mapped;
    uint64_t most = 0;
    for (int i = 0; i < 40; i++) {
        void *p = ng_mi_heap_malloc(obj, 3u << 20);
        REQUIRE(p != NULL);
        CHECK_STATUS(ng_mi_free(p), NG_OK);
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        uint64_t now = alloc_interp_stats(in).bytes_mapped - base;
        if (now > most)
            most = now;
    }
    /* A couple of 3 MiB segments in flight at most, not one per iteration. */
    CHECK_LE(most, (uint64_t)(4 * (4u << 20)));
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}
