/* QSBR-gated page reuse in the object heaps (spec §6.4, M1-M4, R11): an emptied page keeps
 * its blocks' headers for lock-free readers until every reader reported a quiescent state. */
#define _GNU_SOURCE

#include "alloc_helpers.h"

static void gating_scene(ng_mi_heap_kind kind)
{
    ng_interp *in = new_interp();
    if (in == NULL)
        return;
    ng_tstate *ts = attached_state(in);
    ng_mi_heap *h = ts != NULL ? alloc_heap(ts, kind) : NULL;
    if (h == NULL)
        return;
    size_t prefix = ng_mi_kind_prefix(kind);
    CHECK_EQ(h->prefix, prefix);
    size_t size = 96;
    ng_mi_page *page = NULL;
    size_t n = 0;
    void **blocks = fill_page_tagged(h, size, 11, &page, &n);
    if (!CHECK(blocks != NULL && n == page->reserved))
        return;

    reader r;
    reader_start(&r, in);
    CHECK_EQ(ng_atomic_load(&r.ack, NG_SEQ_CST), 1);
    ng_mi_stats before = alloc_heap_stats(h);
    for (size_t i = 0; i < n; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    /* The only page of its class stays in it for a while without a goal (same-class reuse
     * is safe at once); a collection ends that and defers it. */
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    ng_mi_stats waiting = alloc_heap_stats(h);
    CHECK_EQ(waiting.pages_waiting, before.pages_waiting + 1);
    CHECK_GE(waiting.bytes_waiting, before.bytes_waiting + page->area);
    CHECK_EQ(waiting.pages_deferred, before.pages_deferred + 1);
    CHECK_NE(page->qsbr_goal, 0);
    CHECK(page->in_use);
    CHECK_EQ(page->block_size, ng_mi_usable_size(blocks[0]));
    /* The inline path cannot reach it. */
    for (size_t w = 0; w <= NG_MI_DIRECT_WSIZE; w++)
        CHECK(h->direct[w] != page);

    /* Other size classes, many pages of them, with collections and our own reports between:
     * the waiting page is not handed to them, and the headers stay as they were. */
    size_t other_n = ALLOC_SCALED(3000);
    void **others = calloc(other_n, sizeof *others);
    size_t in_waiting = 0;
    for (size_t i = 0; i < other_n; i++) {
        size_t sz = (i % 3 == 0) ? 4000 : (i % 3 == 1) ? 200 : 24;
        others[i] = ng_mi_heap_malloc(h, sz);
        if (others[i] == NULL)
            break;
        in_waiting += in_page(others[i], page);
        alloc_fill(others[i], prefix, sz > prefix ? sz : prefix, 5);
        if (i % 500 == 0) {
            CHECK_STATUS(ng_mi_heap_collect(h, i % 1000 == 0), NG_OK);
            alloc_quiesce(ts);
        }
    }
    CHECK_EQ(in_waiting, 0);
    size_t intact = 0;
    for (size_t i = 0; i < n; i++)
        intact += alloc_check(blocks[i], 0, prefix, 11);
    CHECK_EQ(intact, n);
    CHECK_NE(page->qsbr_goal, 0);
    CHECK_EQ(alloc_heap_stats(h).pages_waiting, waiting.pages_waiting);

    /* The reader reports: the next collection releases the page to its segment. */
    alloc_quiesce(ts);
    reader_cmd(&r, 1, 2);
    alloc_quiesce(ts);
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    ng_mi_stats released = alloc_heap_stats(h);
    CHECK_EQ(released.pages_released_after_goal, waiting.pages_released_after_goal + 1);
    CHECK_EQ(released.pages_waiting, waiting.pages_waiting - 1);
    CHECK(!page->in_use);
    /* ... where another size class takes it. */
    size_t taken = 0;
    enum { MAX_EXTRA = 20000 };
    void **extra = calloc(MAX_EXTRA, sizeof *extra);
    size_t nextra = 0;
    for (; nextra < MAX_EXTRA && taken == 0; nextra++) {
        extra[nextra] = ng_mi_heap_malloc(h, 512);
        if (extra[nextra] == NULL)
            break;
        taken += in_page(extra[nextra], page);
    }
    CHECK_EQ(taken, 1);
    for (size_t i = 0; i < nextra; i++)
        ng_mi_free(extra[i]);
    free(extra);
    for (size_t i = 0; i < other_n; i++)
        ng_mi_free(others[i]);
    free(others);
    reader_cmd(&r, 2, 3);
    join_thread(r.thread);
    free(blocks);
    end_scene(in, ts);
}

TEST(alloc_qsbr_object_page_waits_for_the_reader_before_other_classes_get_it)
{
    gating_scene(NG_MI_HEAP_OBJECT);
}

TEST(alloc_qsbr_gc_pre_page_waits_and_keeps_its_longer_prefix)
{
    gating_scene(NG_MI_HEAP_GC_PRE);
}

TEST(alloc_qsbr_same_class_reuses_a_waiting_page_without_touching_prefixes)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_GC);
    reader r;
    reader_start(&r, in);
    ng_mi_page *page = NULL;
    size_t n = 0;
    void **blocks = fill_page_tagged(h, 64, 3, &page, &n);
    REQUIRE(blocks != NULL);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(blocks[i]);
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK); /* ends the retire delay: it waits */
    CHECK_NE(page->qsbr_goal, 0);
    ng_mi_stats before = alloc_heap_stats(h);
    /* Same class: the slow path takes the waiting page and drops its goal (M3). */
    size_t from_page = 0;
    void **again = calloc(n, sizeof *again);
    for (size_t i = 0; i < n; i++) {
        again[i] = ng_mi_heap_malloc(h, 64);
        from_page += in_page(again[i], page);
    }
    CHECK_EQ(from_page, n);
    CHECK_EQ(page->qsbr_goal, 0);
    ng_mi_stats after = alloc_heap_stats(h);
    CHECK_EQ(after.pages_reused_same_class, before.pages_reused_same_class + 1);
    CHECK_EQ(after.pages_waiting, before.pages_waiting - 1);
    /* The allocator wrote no header byte. */
    size_t intact = 0;
    for (size_t i = 0; i < n; i++)
        intact += alloc_check(again[i], 0, NG_MI_OBJECT_PREFIX, 3);
    CHECK_EQ(intact, n);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(again[i]);
    free(again);
    free(blocks);
    reader_cmd(&r, 2, 3);
    join_thread(r.thread);
    end_scene(in, ts);
}

TEST(alloc_qsbr_mem_pages_go_to_other_classes_at_once)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    reader r;
    reader_start(&r, in); /* holds: it would block any goal */
    ng_mi_page *p1 = NULL, *p2 = NULL;
    size_t n1 = 0, n2 = 0;
    void **b1 = fill_page(mem, 96, &p1, &n1);
    void **b2 = fill_page(mem, 96, &p2, &n2);
    REQUIRE(b1 != NULL && b2 != NULL && p1 != p2);
    for (size_t i = 0; i < n1; i++)
        ng_mi_free(b1[i]);
    for (size_t i = 0; i < n2; i++)
        ng_mi_free(b2[i]);
    CHECK_EQ(alloc_heap_stats(mem).pages_waiting, 0);
    CHECK_EQ(p1->qsbr_goal, 0);
    /* No collection, no report: another class gets one of them right away. */
    size_t taken = 0;
    void *extra[4000];
    size_t nextra = 0;
    for (; nextra < 4000 && taken == 0; nextra++) {
        extra[nextra] = ng_mi_heap_malloc(mem, 512);
        taken += in_page(extra[nextra], p1) || in_page(extra[nextra], p2);
    }
    CHECK_EQ(taken, 1);
    for (size_t i = 0; i < nextra; i++)
        ng_mi_free(extra[i]);
    free(b1);
    free(b2);
    reader_cmd(&r, 2, 3);
    join_thread(r.thread);
    end_scene(in, ts);
}

/* ---- R11 -------------------------------------------------------------------------------------- */

typedef struct foreign_free_arg {
    void **blocks;
    size_t n;
    ng_interp *in;
    uint64_t slot_page_memory; /* the freeing thread's slot after the frees */
} foreign_free_arg;

static void *foreign_free_main(void *p)
{
    foreign_free_arg *a = p;
    ng_tstate *ts = attached_state(a->in);
    for (size_t i = 0; i < a->n; i++)
        CHECK_STATUS(ng_mi_free(a->blocks[i]), NG_OK);
    if (ts != NULL) {
        a->slot_page_memory = ts->qsbr->deferred_page_memory;
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    }
    return NULL;
}

TEST(alloc_r11_deferred_full_pages_serve_their_class_and_memory_stays_flat)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    /* We never report: no goal is ever reached, so only same-class reuse can help. */
    size_t per_page = alloc_page_of(ng_mi_heap_malloc(h, 128))->reserved;
    size_t n = per_page * 6;
    void **blocks = calloc(n, sizeof *blocks);
    REQUIRE(blocks != NULL);
    uint64_t mapped_after_first = 0;
    int cycles = ALLOC_SCALED(100);
    ng_mi_stats st = {0};
    for (int c = 0; c < cycles; c++) {
        for (size_t i = 0; i < n; i++) {
            blocks[i] = ng_mi_heap_malloc(h, 128);
            REQUIRE(blocks[i] != NULL);
        }
        if (c == 0) {
            st = alloc_heap_stats(h);
            mapped_after_first = st.bytes_mapped;
            CHECK_GE(st.pages_in_use, 6); /* the full ones sit in the full queue */
        }
        foreign_free_arg a = {blocks, n, in, 0};
        alloc_run_thread(foreign_free_main, &a);
        /* The emptied pages (most of them in the full queue) start waiting for a goal. */
        CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        if (c == 0)
            CHECK_GE(alloc_heap_stats(h).pages_waiting, 5);
    }
    st = alloc_heap_stats(h);
    CHECK_EQ(st.bytes_mapped, mapped_after_first);
    /* Pages stuck in the full queue would not cost a new segment yet, but more pages. */
    CHECK_LE(st.pages_in_use + st.pages_waiting, 8);
    CHECK_GE(st.pages_reused_same_class, (uint64_t)(cycles - 1) * 5);
    end_scene(in, ts);
    free(blocks);
}

static bool count_live(void *block, size_t size, void *arg)
{
    (*(size_t *)arg)++;
    return true;
}

TEST(alloc_r11_goal_comes_from_the_owner_slot_and_visits_keep_it)
{
    INTERP_SCENE(in);
    /* Page memory never forces an advance here: the counters show whose slot paid. */
    ng_qsbr_set_limits(&in->qsbr, 0, 0, UINT64_C(1) << 40);
    ng_tstate *ts = attached_state(in);
    REQUIRE(ts != NULL);
    ng_mi_heap *h = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(h != NULL);
    ng_mi_page *page = NULL;
    size_t n = 0;
    void **blocks = fill_page(h, 256, &page, &n);
    REQUIRE(blocks != NULL);
    uint64_t mine_before = ts->qsbr->deferred_page_memory;
    foreign_free_arg a = {blocks, n, in, 0};
    alloc_run_thread(foreign_free_main, &a);
    CHECK_EQ(a.slot_page_memory, 0); /* the freeing thread's slot paid nothing */
    CHECK_EQ(page->qsbr_goal, 0);
    /* The owner collects: the page becomes empty and waits, on our slot's account. */
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    CHECK_NE(page->qsbr_goal, 0);
    CHECK_EQ(ts->qsbr->deferred_page_memory, mine_before + page->area);
    /* A heap visit neither resets nor reuses it (R11 b). */
    uint64_t goal = page->qsbr_goal;
    size_t live = 0;
    CHECK_STATUS(ng_mi_heap_visit(h, count_live, &live), NG_OK);
    CHECK_EQ(page->qsbr_goal, goal);
    CHECK_EQ(alloc_heap_stats(h).pages_waiting, 1);
    /* Released without any thread exiting, once we report (R11). */
    alloc_quiesce(ts);
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    CHECK_EQ(alloc_heap_stats(h).pages_waiting, 0);
    CHECK_EQ(alloc_heap_stats(h).pages_released_after_goal, 1);
    free(blocks);
    end_scene(in, ts);
}

TEST(alloc_qsbr_deferred_page_memory_forces_an_advance)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    ng_mi_page *pages[4] = {0};
    void **blocks[4];
    size_t n[4] = {0};
    for (int i = 0; i < 4; i++) {
        blocks[i] = fill_page(h, 512, &pages[i], &n[i]);
        REQUIRE(blocks[i] != NULL);
    }
    /* A limit of two and a half pages: the third emptied page crosses it. */
    size_t area = pages[1]->area;
    ng_qsbr_set_limits(&in->qsbr, 0, 0, area * 5 / 2);
    ts->qsbr->deferred_page_memory = 0; /* owner-only word; we are the owner */
    ng_interp_stats st;
    for (int i = 1; i < 4; i++) {
        ng_interp_get_stats(in, &st);
        uint64_t wr = st.qsbr.wr_seq;
        for (size_t j = 0; j < n[i]; j++)
            ng_mi_free(blocks[i][j]);
        ng_interp_get_stats(in, &st);
        if (i < 3) {
            CHECK_EQ(st.qsbr.wr_seq, wr);
            CHECK_EQ(ts->qsbr->deferred_page_memory, (uint64_t)i * area);
        }
        else {
            CHECK_GT(st.qsbr.wr_seq, wr);
            CHECK_EQ(ts->qsbr->deferred_page_memory, 0);
            CHECK_EQ(pages[i]->qsbr_goal, st.qsbr.wr_seq); /* the goal is the new sequence */
        }
    }
    for (size_t j = 0; j < n[0]; j++)
        ng_mi_free(blocks[0][j]);
    for (int i = 0; i < 4; i++)
        free(blocks[i]);
    end_scene(in, ts);
}

/* The only page of a size class, once emptied, first stays in its class without a goal
 * (same-class reuse is safe at once); when the delay runs out through allocations of other
 * classes (no collect), it waits for a goal like any emptied page, and no other class gets it
 * while a reader holds the goal back. */
TEST(alloc_qsbr_retire_delay_ends_in_a_goal_not_in_another_class)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    reader r;
    reader_start(&r, in);
    ng_mi_page *page = NULL;
    size_t n = 0;
    void **blocks = fill_page_tagged(h, 96, 7, &page, &n);
    REQUIRE(blocks != NULL);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(blocks[i]);
    CHECK_EQ(page->qsbr_goal, 0); /* retire delay: still its class's page, no goal */
    CHECK(page->in_use);

    size_t other_n = ALLOC_SCALED(4000), landed = 0;
    void **others = calloc(other_n, sizeof *others);
    REQUIRE(others != NULL);
    for (size_t i = 0; i < other_n; i++) {
        others[i] = ng_mi_heap_malloc(h, i % 2 ? 4000 : 300);
        if (others[i] == NULL)
            break;
        landed += in_page(others[i], page);
    }
    CHECK_EQ(landed, 0);
    CHECK_NE(page->qsbr_goal, 0); /* the delay ran out: it waits for its goal */
    CHECK(page->in_use);
    CHECK_EQ(alloc_heap_stats(h).pages_waiting, 1);
    size_t intact = 0;
    for (size_t i = 0; i < n; i++)
        intact += alloc_check(blocks[i], 0, NG_MI_OBJECT_PREFIX, 7);
    CHECK_EQ(intact, n);

    for (size_t i = 0; i < other_n; i++)
        ng_mi_free(others[i]);
    free(others);
    reader_cmd(&r, 2, 3);
    join_thread(r.thread);
    free(blocks);
    end_scene(in, ts);
}
