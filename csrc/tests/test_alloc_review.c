/* Page allocator regressions found in review: each test failed before its fix. */
#include "alloc_helpers.h"

/* A request near SIZE_MAX must fail with ENOMEM. The huge path rounded the size up to 16
 * bytes first, which wrapped to 0, and handed out a one-OS-page "block" for it. */
TEST(alloc_review_huge_size_overflow_returns_enomem)
{
    TSTATE_SCENE(in, ts);
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
    end_scene(in, ts);
}

/* Freed huge blocks of an object heap wait for a QSBR goal. A thread that only allocates and
 * frees huge objects, reporting quiescent states as an interpreter loop does, must get their
 * memory back: the goal has to be one that reports reach (not a write sequence nobody ever
 * advances to) and allocation has to notice it. */
TEST(alloc_review_huge_object_frees_do_not_pile_up)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    uint64_t base = alloc_interp_stats(in).bytes_mapped;
    uint64_t most = 0;
    for (int i = 0; i < 40; i++) {
        void *p = ng_mi_heap_malloc(obj, 3u << 20);
        REQUIRE(p != NULL);
        CHECK_STATUS(ng_mi_free(p), NG_OK);
        /* A bare report: it adopts the write sequence but advances nothing. */
        ng_qsbr_quiescent_state(ts->qsbr);
        uint64_t now = alloc_interp_stats(in).bytes_mapped - base;
        if (now > most)
            most = now;
    }
    /* A couple of 3 MiB segments in flight at most, not one per iteration. */
    CHECK_LE(most, (uint64_t)(4 * (4u << 20)));
    end_scene(in, ts);
}

/* ==== Statistics read while other threads allocate, free across threads and exit ============ */

#define RS_SLOTS 256

typedef struct rs_shared {
    ng_interp *in;
    uintptr_t slots[RS_SLOTS]; /* atomic */
    uint32_t stop;             /* atomic */
    uint64_t bad;              /* atomic */
} rs_shared;

typedef struct rs_worker {
    rs_shared *s;
    uint64_t seed;
    int rounds;
} rs_worker;

static void *rs_worker_main(void *arg)
{
    rs_worker *w = arg;
    rs_shared *s = w->s;
    uint64_t rng = w->seed | 1;
    for (int r = 0; r < w->rounds; r++) {
        /* A state per round: its heaps are abandoned at the end of each one. */
        ng_tstate *ts = attached_state(s->in);
        if (ts == NULL)
            return NULL;
        ng_mi_heap *h[NG_MI_HEAP_COUNT];
        for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
            h[k] = alloc_heap(ts, (ng_mi_heap_kind)k);
        for (int i = 0; i < ALLOC_SCALED(2000); i++) {
            uint64_t x = rng_next(&rng);
            size_t size = x % 97 == 0 ? (3u << 20) : 48 + (size_t)(x >> 20) % 2000;
            void *p = ng_mi_heap_malloc(h[x % NG_MI_HEAP_COUNT], size);
            if (p == NULL) {
                ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
                break;
            }
            size_t slot = (size_t)(x >> 40) % RS_SLOTS;
            /* Acq-rel: the block changes hands. */
            void *old = (void *)ng_atomic_exchange(&s->slots[slot], (uintptr_t)p, NG_ACQ_REL);
            if (old != NULL && ng_mi_free(old) != NG_OK)
                ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
            if (i % 32 == 0)
                CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
            if (i % 256 == 0)
                CHECK_STATUS(ng_mi_heap_collect(h[x % NG_MI_HEAP_COUNT], i % 512 == 0), NG_OK);
        }
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    }
    return NULL;
}

static void *rs_stats_main(void *arg)
{
    rs_shared *s = arg;
    /* No state of its own: statistics and frees from a thread without one. */
    while (!ng_atomic_load(&s->stop, NG_ACQUIRE)) {
        ng_mi_stats st;
        if (ng_mi_interp_get_stats(s->in, &st) != NG_OK)
            ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
        void *old = (void *)ng_atomic_exchange(&s->slots[st.segments % RS_SLOTS], 0, NG_ACQ_REL);
        if (old != NULL && ng_mi_free(old) != NG_OK)
            ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
        sched_yield();
    }
    return NULL;
}

TEST(alloc_review_stats_and_stateless_frees_race_with_exiting_threads)
{
    rs_shared *s = calloc(1, sizeof *s);
    REQUIRE(s != NULL);
    s->in = new_interp();
    REQUIRE(s->in != NULL);
    enum { T = 3 };
    pthread_t th[T], st;
    rs_worker w[T];
    st = spawn_thread(rs_stats_main, s);
    for (int t = 0; t < T; t++) {
        w[t] = (rs_worker){s, (uint64_t)t * 7919 + 3, SANITIZED ? 3 : 6};
        th[t] = spawn_thread(rs_worker_main, &w[t]);
    }
    for (int t = 0; t < T; t++)
        join_thread(th[t]);
    ng_atomic_store(&s->stop, 1, NG_RELEASE);
    join_thread(st);
    CHECK_EQ(ng_atomic_load(&s->bad, NG_SEQ_CST), 0);
    ng_tstate *ts = attached_state(s->in);
    REQUIRE(ts != NULL);
    for (size_t i = 0; i < RS_SLOTS; i++)
        if (s->slots[i] != 0)
            CHECK_STATUS(ng_mi_free((void *)s->slots[i]), NG_OK);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        CHECK_STATUS(ng_mi_heap_collect(alloc_heap(ts, (ng_mi_heap_kind)k), true), NG_OK);
    alloc_quiesce(ts);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        CHECK_STATUS(ng_mi_heap_collect(alloc_heap(ts, (ng_mi_heap_kind)k), true), NG_OK);
    ng_mi_stats end = alloc_interp_stats(s->in);
    CHECK_EQ(end.blocks_in_use, 0);
    CHECK_EQ(end.pages_abandoned, 0);
    CHECK_EQ(end.huge_blocks, 0);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(s->in), NG_OK);
    free(s);
}

/* A freed huge object block waits for its goal; once the goal is reached, the next time the
 * heap needs a fresh page the block's mapping must go (CPython processes its deferred pages,
 * huge ones included, whenever mimalloc needs a fresh page). It stayed mapped until the next
 * huge allocation or an explicit collection, so one freed 64 MiB object kept its memory for
 * as long as the program allocated only small blocks. */
TEST(alloc_review_freed_huge_object_goes_when_a_fresh_page_is_needed)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    void *big = ng_mi_heap_malloc(obj, 64u << 20);
    REQUIRE(big != NULL);
    uint64_t with_big = alloc_interp_stats(in).bytes_mapped;
    CHECK_STATUS(ng_mi_free(big), NG_OK);
    alloc_quiesce(ts); /* every goal so far is reached now */
    /* Small blocks of one class until several fresh pages were needed. */
    size_t n = 3 * (((size_t)64 << 10) / 256);
    void **blocks = calloc(n, sizeof *blocks);
    REQUIRE(blocks != NULL);
    for (size_t i = 0; i < n; i++) {
        blocks[i] = ng_mi_heap_malloc(obj, 256);
        REQUIRE(blocks[i] != NULL);
    }
    uint64_t after = alloc_interp_stats(in).bytes_mapped;
    CHECK_LT(after + (uint64_t)(32u << 20), with_big);
    CHECK_EQ(alloc_interp_stats(in).pages_waiting, 0);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(blocks[i]);
    free(blocks);
    end_scene(in, ts);
}

/* calloc of a huge block gets a fresh mapping, which the kernel zeroes on first touch: writing
 * zeros over it made every page resident at once (calloc(1, 1 GiB) committed 1 GiB). */
#include <sys/mman.h>
#include <unistd.h>

TEST(alloc_review_huge_calloc_does_not_touch_the_fresh_mapping)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    size_t size = 64u << 20;
    uint8_t *p = ng_mi_heap_calloc(mem, 1, size);
    REQUIRE(p != NULL);
    size_t os_page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)p + os_page - 1) & ~(uintptr_t)(os_page - 1);
    size_t pages = (size - os_page) / os_page;
    unsigned char *vec = malloc(pages);
    REQUIRE(vec != NULL);
    REQUIRE(mincore((void *)from, pages * os_page, vec) == 0);
    size_t resident = 0;
    for (size_t i = 0; i < pages; i++)
        resident += vec[i] & 1;
    CHECK_LT(resident, pages / 8);
    /* And it reads as zeros. */
    bool zero = true;
    for (size_t i = 0; i < size; i += 4093)
        zero &= p[i] == 0;
    CHECK(zero && p[size - 1] == 0);
    free(vec);
    CHECK_STATUS(ng_mi_free(p), NG_OK);
    end_scene(in, ts);
}
