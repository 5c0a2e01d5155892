/* The owner's deferred frees (nogil/alloc.h, ng_mi_dfree): a buffered block is free to every
 * reader of the heap (visit, statistics, the checked free), whoever reads it (the owner, the
 * thread that stopped the owner's world, a fork child's survivor), and each block goes to the
 * buffer of the set that owns its segment. The tests turn buffering on for small
 * heaps too (ng_mi_test_dfree_always), and each first checks that its frees were buffered,
 * so that it tests the buffer and not the direct path. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc_helpers.h"

enum { DF_ALLOCATED = 8, DF_FREED = 5 }; /* DF_FREED < NG_MI_DFREE_N: no flush by the push */

/* Buffering on for every heap until the test returns, also through an early REQUIRE return:
 * a flag left set would change what every later test measures. */
static void df_always_off(int *unused)
{
    (void)unused;
    ng_atomic_store(&ng_mi_test_dfree_always, 0, NG_RELAXED);
}
#define DF_ALWAYS_ON()                                                                        \
    __attribute__((cleanup(df_always_off))) int df_always_on_ =                               \
        (ng_atomic_store(&ng_mi_test_dfree_always, 1, NG_RELAXED), 1);                        \
    (void)df_always_on_

static bool df_count(void *block, size_t size, void *arg)
{
    (void)block;
    (void)size;
    (*(size_t *)arg)++;
    return true;
}

/* What a stopper reads of another thread's heap: the live blocks a visit counts, and the
 * heap's statistics. */
static void df_read_heap(ng_mi_heap *h, size_t *live, ng_mi_stats *st)
{
    *live = 0;
    CHECK_STATUS(ng_mi_heap_visit(h, df_count, live), NG_OK);
    memset(st, 0, sizeof *st);
    CHECK_STATUS(ng_mi_heap_get_stats(h, st), NG_OK);
}

/* Allocates DF_ALLOCATED blocks of 64 bytes from h and frees the first DF_FREED of them;
 * whether those frees were buffered. */
static bool df_alloc_and_free(ng_mi_heap *h, void **blocks)
{
    for (int i = 0; i < DF_ALLOCATED; i++) {
        blocks[i] = ng_mi_heap_malloc(h, 64);
        if (blocks[i] == NULL)
            return false;
    }
    ng_mi_dfree *d = &h->thread->dfree;
    uint32_t before = d->n;
    for (int i = 0; i < DF_FREED; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    return d->on && d->n == before + DF_FREED;
}

TEST(alloc_dfree_owner_sees_buffered_blocks_as_free)
{
    DF_ALWAYS_ON();
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    void *blocks[DF_ALLOCATED];
    REQUIRE(df_alloc_and_free(h, blocks));
    size_t live = 0;
    CHECK_STATUS(ng_mi_heap_visit(h, df_count, &live), NG_OK);
    CHECK_EQ(live, DF_ALLOCATED - DF_FREED);

    REQUIRE(df_alloc_and_free(h, blocks));
    CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 2 * DF_ALLOCATED - 2 * DF_FREED);

    /* A second free of a buffered block: NG_ESTATE from the checked free (release builds
     * look in the buffer, debug builds find the live bit cleared), the block untouched. */
    void *again = ng_mi_heap_malloc(h, 64);
    REQUIRE(again != NULL);
    uint32_t n = h->thread->dfree.n;
    CHECK_STATUS(ng_mi_free(again), NG_OK);
    REQUIRE(h->thread->dfree.n == n + 1);
    CHECK_STATUS(ng_mi_free_checked(again), NG_ESTATE);
    CHECK_EQ(h->thread->dfree.n, n + 1);

    /* Every block freed, a collect empties the heap: the buffer does not hold pages. */
    for (int i = DF_FREED; i < DF_ALLOCATED; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    CHECK_EQ(h->thread->dfree.n, 0);
    CHECK_EQ(alloc_heap_stats(h).blocks_in_use, DF_ALLOCATED - DF_FREED);
    end_scene(in, ts);
}

/* A thread whose frees are buffered when it detaches and waits. */
typedef struct df_holder {
    ng_interp *in;
    ng_event ready, done;
    ng_mi_heap *heap;
    void *blocks[DF_ALLOCATED];
    bool buffered;
} df_holder;

static void *df_holder_main(void *arg)
{
    df_holder *d = arg;
    ng_tstate *ts = attached_state(d->in);
    if (ts != NULL) {
        d->heap = alloc_heap(ts, NG_MI_HEAP_OBJECT);
        d->buffered = d->heap != NULL && df_alloc_and_free(d->heap, d->blocks);
        CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    }
    ng_event_notify(&d->ready);
    ng_event_wait(&d->done);
    if (ts == NULL)
        return NULL;
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    if (d->buffered)
        for (int i = DF_FREED; i < DF_ALLOCATED; i++)
            CHECK_STATUS(ng_mi_free(d->blocks[i]), NG_OK);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_dfree_stopper_sees_a_stopped_owners_buffered_blocks_as_free)
{
    DF_ALWAYS_ON();
    TSTATE_SCENE(in, ts);
    df_holder d;
    memset(&d, 0, sizeof d);
    d.in = in;
    pthread_t th = spawn_thread(df_holder_main, &d);
    ng_event_wait(&d.ready);
    CHECK(d.buffered);
    if (d.buffered) {
        CHECK_STATUS(ng_stop_the_world(in, ts), NG_OK);
        size_t live;
        ng_mi_stats st;
        df_read_heap(d.heap, &live, &st);
        CHECK_STATUS(ng_start_the_world(in), NG_OK);
        CHECK_EQ(live, DF_ALLOCATED - DF_FREED);
        CHECK_EQ(st.blocks_in_use, DF_ALLOCATED - DF_FREED);
    }
    ng_event_notify(&d.done);
    join_thread(th);
    CHECK_EQ(alloc_interp_stats(in).blocks_in_use, 0);
    end_scene(in, ts);
}

enum {
    DF_CHILD_STATS = 1 << 0, /* the dead thread's buffered blocks are free in the child */
    DF_CHILD_FREE = 1 << 1,  /* its live ones can be freed, and then nothing is in use */
};

static int df_fork_child(ng_interp *in, ng_tstate *me, df_holder *d)
{
    int bad = 0;
    ng_mi_heap *h;
    if (ng_mi_heap_of(me, NG_MI_HEAP_OBJECT, &h) != NG_OK || ng_mi_heap_collect(h, true) != NG_OK)
        return DF_CHILD_STATS;
    ng_mi_stats st;
    if (ng_mi_interp_get_stats(in, &st) != NG_OK ||
        st.blocks_in_use != DF_ALLOCATED - DF_FREED)
        bad |= DF_CHILD_STATS;
    for (int i = DF_FREED; i < DF_ALLOCATED; i++)
        if (ng_mi_free(d->blocks[i]) != NG_OK)
            bad |= DF_CHILD_FREE;
    if (ng_mi_heap_collect(h, true) != NG_OK || ng_mi_interp_get_stats(in, &st) != NG_OK ||
        st.blocks_in_use != 0)
        bad |= DF_CHILD_FREE;
    return bad;
}

TEST(alloc_dfree_fork_child_frees_a_dead_threads_buffered_blocks)
{
    DF_ALWAYS_ON();
    TSTATE_SCENE(in, me);
    df_holder d;
    memset(&d, 0, sizeof d);
    d.in = in;
    pthread_t th = spawn_thread(df_holder_main, &d);
    ng_event_wait(&d.ready);
    CHECK(d.buffered);
    if (d.buffered) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            _exit(df_fork_child(in, me, &d));
        }
        REQUIRE(pid > 0);
        int raw = wait_child(pid, 30000);
        CHECK(raw != -1 && WIFEXITED(raw));
        int status = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
        CHECK_EQ(status, 0);
        if (status > 0 && (status & DF_CHILD_STATS))
            harness_fail(__FILE__, __LINE__, "child: buffered blocks counted in use");
        if (status > 0 && (status & DF_CHILD_FREE))
            harness_fail(__FILE__, __LINE__, "child: live blocks not freed");
    }
    ng_event_notify(&d.done);
    join_thread(th);
    end_scene(in, me);
}

/* A thread with two states frees each block into the buffer of the set that owns its
 * segment; releasing one state flushes its set's buffer and frees the set, and the other
 * set keeps buffering (ASan: no use of the freed set). */
TEST(alloc_dfree_each_set_buffers_its_own_blocks)
{
    DF_ALWAYS_ON();
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    void *b = ng_mi_heap_malloc(h, 64);
    REQUIRE(b != NULL);
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    ng_tstate *other = attached_state(in);
    REQUIRE(other != NULL);
    ng_mi_heap *oh = alloc_heap(other, NG_MI_HEAP_OBJECT);
    REQUIRE(oh != NULL);
    void *ob = ng_mi_heap_malloc(oh, 64);
    REQUIRE(ob != NULL);
    uint32_t n = oh->thread->dfree.n, mine = h->thread->dfree.n;
    CHECK_STATUS(ng_mi_free(ob), NG_OK); /* buffered in `other`'s set, flushed by the release */
    CHECK_EQ(oh->thread->dfree.n, n + 1);
    CHECK_EQ(h->thread->dfree.n, mine);
    CHECK_STATUS(ng_tstate_release(other), NG_OK);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    CHECK_STATUS(ng_mi_free(b), NG_OK);
    CHECK_EQ(h->thread->dfree.n, mine + 1);
    end_scene(in, ts);
}

/* Without the test switch, a set buffers only while an object heap spans more than one
 * segment: not for a few blocks, yes once the heap has grown past a segment, and not again
 * once a collect has given the extra segments back. */
TEST(alloc_dfree_buffering_follows_the_heaps_size)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    void *small = ng_mi_heap_malloc(h, 64);
    REQUIRE(small != NULL);
    CHECK_STATUS(ng_mi_free(small), NG_OK);
    CHECK_EQ(h->thread->dfree.n, 0);

    size_t n = (size_t)(NG_MI_SEGMENT_SIZE / 1024) * 3 / 2; /* 1.5 segments of 1 KiB blocks */
    void **blocks = calloc(n, sizeof *blocks);
    REQUIRE(blocks != NULL);
    for (size_t i = 0; i < n; i++) {
        blocks[i] = ng_mi_heap_malloc(h, 1024);
        REQUIRE(blocks[i] != NULL);
    }
    CHECK_STATUS(ng_mi_free(blocks[0]), NG_OK);
    CHECK_EQ(h->thread->dfree.n, 1);

    for (size_t i = 1; i < n; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    alloc_quiesce(ts); /* emptied pages may wait for a goal before their segment goes */
    CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
    small = ng_mi_heap_malloc(h, 2000); /* a class with no page: the slow path re-decides */
    REQUIRE(small != NULL);
    CHECK_STATUS(ng_mi_free(small), NG_OK);
    CHECK_EQ(h->thread->dfree.n, 0);
    free(blocks);
    end_scene(in, ts);
}

/* ---- review2 ------------------------------------------------------------------------------- */

/* Statistics of the whole interpreter see the caller's buffered blocks as free, as the heap's
 * own statistics do. */
TEST(alloc_dfree_interp_stats_see_buffered_blocks_as_free)
{
    DF_ALWAYS_ON();
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    void *blocks[DF_ALLOCATED];
    REQUIRE(df_alloc_and_free(h, blocks));
    CHECK_EQ(alloc_interp_stats(in).blocks_in_use, DF_ALLOCATED - DF_FREED);
    for (int i = DF_FREED; i < DF_ALLOCATED; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    end_scene(in, ts);
}

/* A detached owner whose buffered frees would empty a page, and which runs its MEM heap's
 * slow path (allowed while detached) during another thread's stop-the-world. The stopper's
 * visit and statistics must not retire the owner's pages: that links them into the
 * deferred-page FIFO the owner's MEM slow path walks (TSan: data race on qsbr_head). The
 * FIFO and the deferral counter are checked directly, so the test fails without TSan too. */
typedef struct df_mem_owner {
    ng_interp *in;
    ng_event ready, done;
    ng_mi_heap *heap;
    bool buffered;
    int go, looped; /* relaxed on purpose: no happens-before for TSan to lean on */
} df_mem_owner;

static void *df_mem_owner_main(void *arg)
{
    df_mem_owner *d = arg;
    ng_tstate *ts = attached_state(d->in);
    ng_mi_heap *mem = ts != NULL ? alloc_heap(ts, NG_MI_HEAP_MEM) : NULL;
    d->heap = ts != NULL ? alloc_heap(ts, NG_MI_HEAP_OBJECT) : NULL;
    if (mem != NULL && d->heap != NULL) {
        /* Two large blocks: one page, emptied (and deferred) only by the flush. */
        void *a = ng_mi_heap_malloc(d->heap, 200 * 1024), *b = ng_mi_heap_malloc(d->heap, 200 * 1024);
        uint32_t n = d->heap->thread->dfree.n;
        if (a != NULL && b != NULL) {
            CHECK_STATUS(ng_mi_free(a), NG_OK);
            CHECK_STATUS(ng_mi_free(b), NG_OK);
            d->buffered = d->heap->thread->dfree.n == n + 2 && d->heap->thread->qsbr_head == NULL;
        }
        CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    }
    ng_event_notify(&d->ready);
    if (d->buffered) {
        SPIN_UNTIL(ng_atomic_load(&d->go, NG_RELAXED));
        static void *ps[64];
        for (int r = 0; r < ALLOC_SCALED(200); r++) {
            for (int i = 0; i < 64; i++)
                ps[i] = ng_mi_heap_malloc(mem, 16 * 1024); /* a new page every 4 */
            for (int i = 0; i < 64; i++)
                ng_mi_free(ps[i]);
        }
        ng_atomic_store(&d->looped, 1, NG_RELAXED);
    }
    ng_event_wait(&d->done);
    if (ts != NULL)
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_dfree_stopper_leaves_a_detached_owners_pages_alone)
{
    DF_ALWAYS_ON();
    TSTATE_SCENE(in, ts);
    df_mem_owner d;
    memset(&d, 0, sizeof d);
    d.in = in;
    pthread_t th = spawn_thread(df_mem_owner_main, &d);
    ng_event_wait(&d.ready);
    CHECK(d.buffered);
    if (d.buffered) {
        ng_mi_thread *t = d.heap->thread;
        CHECK_STATUS(ng_stop_the_world(in, ts), NG_OK);
        ng_atomic_store(&d.go, 1, NG_RELAXED);
        size_t live;
        ng_mi_stats st;
        df_read_heap(d.heap, &live, &st);
        /* Relaxed: a single-writer counter (alloc_internal.h). */
        uint64_t deferred =
            ng_atomic_load(&t->data[NG_MI_HEAP_OBJECT].c.pages_deferred, NG_RELAXED);
        SPIN_UNTIL(ng_atomic_load(&d.looped, NG_RELAXED));
        CHECK_STATUS(ng_start_the_world(in), NG_OK);
        CHECK_EQ(live, 0);
        CHECK_EQ(st.blocks_in_use, 0);
        CHECK_EQ(deferred, 0); /* the stopper retired none of the owner's pages */
    }
    ng_event_notify(&d.done);
    join_thread(th);
    end_scene(in, ts);
}

/* A fork child's abandon of a dead thread flushes that thread's buffer. A buffered block of a
 * full page unfulls it, which waits out a freer's transient FREEING; in a fork child that
 * freer may be dead, and the wait never ends unless the page is NEVER-delayed first (as the
 * abandon does, without waiting). The dead freer is simulated, as in alloc_contract. */
typedef struct df_full_holder {
    ng_interp *in;
    ng_event ready, done;
    ng_mi_page *page;
    void **blocks;
    size_t n;
    bool ok;
} df_full_holder;

static void *df_full_holder_main(void *arg)
{
    df_full_holder *d = arg;
    ng_tstate *ts = attached_state(d->in);
    ng_mi_heap *h = ts != NULL ? alloc_heap(ts, NG_MI_HEAP_OBJECT) : NULL;
    void *first = h != NULL ? ng_mi_heap_malloc(h, 64) : NULL;
    if (first != NULL) {
        d->page = alloc_page_of(first);
        d->n = d->page->reserved + 1; /* the last allocation sends the page to full */
        d->blocks = calloc(d->n, sizeof *d->blocks);
        if (d->blocks != NULL) {
            d->blocks[0] = first;
            bool all = true;
            for (size_t i = 1; i < d->n; i++)
                all = all && (d->blocks[i] = ng_mi_heap_malloc(h, 64)) != NULL;
            uint32_t n = h->thread->dfree.n;
            CHECK_STATUS(ng_mi_free(first), NG_OK);
            d->ok = all && (d->page->flags & NG_MI_PAGE_IN_FULL) && h->thread->dfree.n == n + 1;
        }
    }
    if (ts != NULL)
        CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    ng_event_notify(&d->ready);
    ng_event_wait(&d->done);
    if (ts == NULL)
        return NULL;
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    for (size_t i = 1; d->blocks != NULL && i < d->n; i++)
        if (d->blocks[i] != NULL)
            CHECK_STATUS(ng_mi_free(d->blocks[i]), NG_OK);
    free(d->blocks);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_dfree_fork_child_flush_does_not_wait_for_a_dead_freer)
{
    DF_ALWAYS_ON();
    TSTATE_SCENE(in, me);
    df_full_holder d;
    memset(&d, 0, sizeof d);
    d.in = in;
    pthread_t th = spawn_thread(df_full_holder_main, &d);
    ng_event_wait(&d.ready);
    CHECK(d.ok);
    if (d.ok) {
        /* Seq-cst: plain bookkeeping of a simulated freer; the holder is parked. */
        uintptr_t before = ng_atomic_load(&d.page->thread_free, NG_SEQ_CST);
        ng_atomic_store(&d.page->thread_free,
                        (before & ~NG_MI_DELAY_MASK) | NG_MI_DELAY_FREEING, NG_SEQ_CST);
        pid_t pid = fork();
        if (pid == 0)
            _exit(0); /* reached only if the clears of the dead threads returned */
        ng_atomic_store(&d.page->thread_free, before, NG_SEQ_CST);
        REQUIRE(pid > 0);
        int raw = wait_child(pid, 30000);
        CHECK(raw != -1); /* -1: hung in the fork's child hooks, killed */
        CHECK(raw != -1 && WIFEXITED(raw) && WEXITSTATUS(raw) == 0);
    }
    ng_event_notify(&d.done);
    join_thread(th);
    end_scene(in, me);
}

/* A state claimed by an interpreter's deletion is released without the clear hook; its heap
 * set is freed with the interpreter (hook_interp_free). The thread's later frees into its
 * other interpreter's heap must not touch that set (ASan: heap-use-after-free in the push,
 * as when the push went through a thread-local pointer to the last set used). */
typedef struct df_claimed {
    ng_interp *x, *y;
    ng_event ready, deleted;
    bool ok;
} df_claimed;

static void *df_claimed_main(void *arg)
{
    df_claimed *d = arg;
    ng_tstate *b = attached_state(d->y);
    ng_mi_heap *hb = b != NULL ? alloc_heap(b, NG_MI_HEAP_OBJECT) : NULL;
    void *p = hb != NULL ? ng_mi_heap_malloc(hb, 64) : NULL;
    ng_tstate *a = NULL;
    if (p != NULL && CHECK_STATUS(ng_tstate_detach(b), NG_OK))
        a = attached_state(d->x);
    if (a != NULL) {
        ng_mi_heap *ha = alloc_heap(a, NG_MI_HEAP_OBJECT);
        /* The first malloc's slow path turns a's buffering on; the block goes with x. */
        d->ok = ha != NULL && ng_mi_heap_malloc(ha, 64) != NULL && ha->thread->dfree.on;
        CHECK_STATUS(ng_tstate_detach(a), NG_OK);
    }
    ng_event_notify(&d->ready);
    ng_event_wait(&d->deleted);
    if (a != NULL)
        CHECK_STATUS(ng_tstate_release(a), NG_OK); /* the last reference: x's sets go */
    if (b != NULL) {
        CHECK_STATUS(ng_tstate_attach(b), NG_OK);
        if (p != NULL)
            CHECK_STATUS(ng_mi_free(p), NG_OK);
        CHECK_STATUS(ng_tstate_release(b), NG_OK);
    }
    return NULL;
}

TEST(alloc_dfree_pointer_outlives_a_claimed_state_harmlessly)
{
    DF_ALWAYS_ON();
    df_claimed d;
    memset(&d, 0, sizeof d);
    d.x = new_interp();
    d.y = new_interp();
    REQUIRE(d.x != NULL && d.y != NULL);
    pthread_t th = spawn_thread(df_claimed_main, &d);
    ng_event_wait(&d.ready);
    CHECK(d.ok);
    CHECK_STATUS(ng_interp_delete(d.x), NG_OK);
    ng_event_notify(&d.deleted);
    join_thread(th);
    CHECK_STATUS(ng_interp_delete(d.y), NG_OK);
}

/* ---- The segments' dfree byte -------------------------------------------------------------- */

/* Whether freeing `p` (a block of one of the caller's segments) goes to the buffer of `t`. */
static bool df_free_buffers(ng_mi_thread *t, void *p)
{
    uint32_t n = t->dfree.n;
    CHECK_STATUS(ng_mi_free(p), NG_OK);
    return t->dfree.n == n + 1;
}

/* An object heap's emptied segment is kept as the set's cached segment and may come back for
 * the MEM heap, whose frees must never be buffered (its owner may free while detached): the
 * segment's byte follows its new heap kind, not the buffering of its old one. */
TEST(alloc_dfree_object_segment_reused_by_the_mem_heap_is_not_buffered)
{
    DF_ALWAYS_ON();
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    ng_mi_thread *t = h->thread;
    void *b = ng_mi_heap_malloc(h, 64);
    REQUIRE(b != NULL);
    ng_mi_segment *s = ng_mi_segment_of(b);
    REQUIRE(df_free_buffers(t, b));
    /* The flush empties the page; once its goal is reached it goes back, and so does the
     * emptied segment, to the cache. */
    for (int i = 0; i < 8 && t->cached != s; i++) {
        CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        alloc_quiesce(ts);
    }
    REQUIRE(t->cached == s);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    REQUIRE(mem != NULL);
    void *p = ng_mi_heap_malloc(mem, 64);
    REQUIRE(p != NULL);
    REQUIRE(ng_mi_segment_of(p) == s);
    CHECK(!df_free_buffers(t, p));
    CHECK_EQ(alloc_heap_stats(mem).blocks_in_use, 0);
    end_scene(in, ts);
}

/* A segment reclaimed from the abandoned pool buffers as its new set does: a set that does
 * not buffer frees straight into the pages of a segment whose last owner buffered, and a set
 * that buffers takes the frees of a segment whose last owner did not. */
TEST(alloc_dfree_reclaimed_segment_follows_its_new_sets_buffering)
{
    DF_ALWAYS_ON();
    TSTATE_SCENE(in, ts);
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    ng_tstate *other = attached_state(in);
    REQUIRE(other != NULL);
    ng_mi_heap *oh = alloc_heap(other, NG_MI_HEAP_OBJECT);
    REQUIRE(oh != NULL);
    void *x = ng_mi_heap_malloc(oh, 64);
    REQUIRE(x != NULL);
    REQUIRE(oh->thread->dfree.on && ng_mi_segment_of(x)->dfree);
    CHECK_STATUS(ng_tstate_release(other), NG_OK); /* x's segment goes to the pool */

    ng_atomic_store(&ng_mi_test_dfree_always, 0, NG_RELAXED);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    ng_mi_heap *h = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(h != NULL);
    CHECK_STATUS(ng_mi_heap_collect(h, true), NG_OK);
    REQUIRE(ng_mi_segment_of(x)->owner == h->thread);
    REQUIRE(!h->thread->dfree.on);
    CHECK(!df_free_buffers(h->thread, x));
    CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 0);

    /* The other way round: abandoned by a set that did not buffer. */
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    other = attached_state(in);
    REQUIRE(other != NULL);
    oh = alloc_heap(other, NG_MI_HEAP_OBJECT);
    REQUIRE(oh != NULL);
    void *y = ng_mi_heap_malloc(oh, 96);
    REQUIRE(y != NULL);
    REQUIRE(!oh->thread->dfree.on);
    CHECK_STATUS(ng_tstate_release(other), NG_OK);
    ng_atomic_store(&ng_mi_test_dfree_always, 1, NG_RELAXED);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    void *z = ng_mi_heap_malloc(h, 2000); /* a class without a page: the slow path turns it on */
    REQUIRE(z != NULL);
    REQUIRE(h->thread->dfree.on);
    CHECK_STATUS(ng_mi_heap_collect(h, true), NG_OK);
    REQUIRE(ng_mi_segment_of(y)->owner == h->thread);
    CHECK(df_free_buffers(h->thread, y));
    CHECK_STATUS(ng_mi_free(z), NG_OK);
    end_scene(in, ts);
}

/* Without the test switch: an object heap that grows into the set's cached segment (left by
 * the MEM heap) spans two segments, and the next slow path turns buffering on, also for the
 * blocks of its first segment. */
TEST(alloc_dfree_growing_into_the_cached_segment_turns_buffering_on)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    ng_mi_thread *t = h->thread;
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    REQUIRE(mem != NULL);
    void *first = ng_mi_heap_malloc(h, 1024);
    REQUIRE(first != NULL);
    void *m = ng_mi_heap_malloc(mem, 64);
    REQUIRE(m != NULL);
    ng_mi_segment *cached = ng_mi_segment_of(m);
    REQUIRE(cached != ng_mi_segment_of(first));
    CHECK_STATUS(ng_mi_free(m), NG_OK);
    CHECK_STATUS(ng_mi_heap_collect(mem, false), NG_OK); /* the MEM page and segment go */
    REQUIRE(t->cached == cached);

    size_t n = (size_t)(NG_MI_SEGMENT_SIZE / 1024) * 3 / 2;
    void **blocks = calloc(n, sizeof *blocks);
    REQUIRE(blocks != NULL);
    size_t got = 0;
    while (got < n && t->data[NG_MI_HEAP_OBJECT].segments->next == NULL) {
        blocks[got] = ng_mi_heap_malloc(h, 1024);
        if (blocks[got] == NULL)
            break;
        got++;
    }
    CHECK(t->data[NG_MI_HEAP_OBJECT].segments == cached);
    void *z = ng_mi_heap_malloc(h, 2000); /* a class without a page: the slow path re-decides */
    REQUIRE(z != NULL);
    CHECK(t->dfree.on);
    CHECK(df_free_buffers(t, first));
    CHECK_STATUS(ng_mi_free(z), NG_OK);
    for (size_t i = 0; i < got; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_OK);
    free(blocks);
    end_scene(in, ts);
}
