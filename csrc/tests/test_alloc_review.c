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
