/* The page allocator across thread lifetimes: blocks that outlive their thread, abandoned
 * segments reclaimed by others (waiting pages keeping their goal), interpreter deletion
 * unmapping everything, and the fork child adopting dead threads' segments. */
#define _GNU_SOURCE

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc_helpers.h"

/* ==== Stress: shared slots, threads come and go (mimalloc's test-stress pattern) ============== */

#define STRESS_SLOTS 1024

typedef struct stress {
    ng_interp *in;
    uintptr_t slots[STRESS_SLOTS]; /* atomic: blocks, each starting with its size */
    uint64_t bad;                  /* atomic: blocks found with a broken pattern */
} stress;

typedef struct stress_worker {
    stress *s;
    uint64_t seed;
    long iterations;
} stress_worker;

static void *stress_block(ng_mi_heap *h, uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    size_t size = 16 + (r % 16 == 0 ? (size_t)(r >> 12) % 40000 : (size_t)(r >> 12) % 400);
    if (r % 2000 == 0)
        size = (3u << 20) + 40; /* now and then a huge one */
    uint64_t *p = ng_mi_heap_malloc(h, size);
    if (p == NULL)
        return NULL;
    p[0] = size;
    size_t upto = size < 256 ? size : 256;
    alloc_fill(p, 8, upto, (uint32_t)size);
    return p;
}

static bool stress_check(const void *p)
{
    size_t size = *(const uint64_t *)p;
    size_t upto = size < 256 ? size : 256;
    return ng_mi_usable_size(p) >= size && alloc_check(p, 8, upto, (uint32_t)size);
}

static void *stress_main(void *arg)
{
    stress_worker *w = arg;
    stress *s = w->s;
    ng_tstate *ts = attached_state(s->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *heaps[NG_MI_HEAP_COUNT];
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        heaps[k] = alloc_heap(ts, (ng_mi_heap_kind)k);
    uint64_t rng = w->seed | 1;
    for (long i = 0; i < w->iterations; i++) {
        void *p = stress_block(heaps[rng_next(&rng) % NG_MI_HEAP_COUNT], &rng);
        if (p == NULL) {
            ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
            break;
        }
        size_t slot = rng_next(&rng) % STRESS_SLOTS;
        /* Acq-rel: we read the old block's contents and hand ours over. */
        void *old = (void *)ng_atomic_exchange(&s->slots[slot], (uintptr_t)p, NG_ACQ_REL);
        if (old != NULL) {
            if (!stress_check(old))
                ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
            if (ng_mi_free(old) != NG_OK)
                ng_atomic_fetch_add(&s->bad, 1, NG_SEQ_CST);
        }
        if (i % 64 == 0)
            CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    }
    /* Half the workers leave through thread exit instead of an explicit release. */
    if (w->seed % 2 == 0)
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_threads_blocks_outlive_their_threads_and_are_reclaimed)
{
    uint64_t mapped_before = ng_atomic_load(&ng_mi_os_mapped_bytes, NG_SEQ_CST);
    stress *s = calloc(1, sizeof *s);
    REQUIRE(s != NULL);
    s->in = new_interp();
    REQUIRE(s->in != NULL);
    enum { T = 4 };
    int rounds = SANITIZED ? 4 : 8;
    long iterations = ALLOC_SCALED(6000);
    uint64_t seed = 1;
    bool abandoned_seen = false;
    for (int r = 0; r < rounds; r++) {
        pthread_t th[T];
        stress_worker w[T];
        for (int t = 0; t < T; t++) {
            w[t] = (stress_worker){s, seed++, iterations};
            th[t] = spawn_thread(stress_main, &w[t]);
        }
        for (int t = 0; t < T; t++)
            join_thread(th[t]);
        ng_mi_stats st = alloc_interp_stats(s->in);
        abandoned_seen |= st.pages_abandoned > 0 && st.segments_abandoned > 0;
    }
    CHECK_EQ(ng_atomic_load(&s->bad, NG_SEQ_CST), 0);
    CHECK(abandoned_seen);
    ng_mi_stats mid = alloc_interp_stats(s->in);
    CHECK_GT(mid.segments_reclaimed, 0); /* later threads took over earlier ones' segments */
    CHECK_EQ(mid.blocks_in_use >= 1, true);

    /* A survivor frees what is left and adopts the rest of the pool. */
    ng_tstate *ts = attached_state(s->in);
    REQUIRE(ts != NULL);
    size_t bad = 0;
    for (size_t i = 0; i < STRESS_SLOTS; i++) {
        void *p = (void *)s->slots[i];
        if (p == NULL)
            continue;
        bad += !stress_check(p);
        CHECK_STATUS(ng_mi_free(p), NG_OK);
    }
    CHECK_EQ(bad, 0);
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        CHECK_STATUS(ng_mi_heap_collect(alloc_heap(ts, (ng_mi_heap_kind)k), true), NG_OK);
    ng_mi_stats end = alloc_interp_stats(s->in);
    CHECK_EQ(end.pages_abandoned, 0);
    CHECK_EQ(end.blocks_in_use, 0);
    CHECK_GT(end.segments_reclaimed, mid.segments_reclaimed);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(s->in), NG_OK);
    /* Deleting the interpreter unmapped every segment it had. */
    CHECK_EQ(ng_atomic_load(&ng_mi_os_mapped_bytes, NG_SEQ_CST), mapped_before);
    free(s);
}

/* ==== Reclaim of a waiting page ================================================================== */

typedef struct leaver {
    ng_interp *in;
    ng_mi_page *waiting;   /* an emptied object page, waiting for its goal */
    void **waiting_blocks;
    size_t n_waiting;
    void *mem_blocks[16];  /* live blocks left behind */
} leaver;

static void *leaver_main(void *arg)
{
    leaver *l = arg;
    ng_tstate *ts = attached_state(l->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    l->waiting_blocks = fill_page(obj, 96, &l->waiting, &l->n_waiting);
    for (size_t i = 0; i < l->n_waiting; i++)
        alloc_fill(l->waiting_blocks[i], 0, NG_MI_OBJECT_PREFIX, 21);
    for (int i = 0; i < 16; i++) {
        l->mem_blocks[i] = ng_mi_heap_malloc(mem, 100 + i);
        alloc_fill(l->mem_blocks[i], 0, 100, 22);
    }
    for (size_t i = 0; i < l->n_waiting; i++)
        ng_mi_free(l->waiting_blocks[i]);
    /* The only page of its class stays in it for a while without a goal; a collection
     * ends that and defers it. */
    CHECK_STATUS(ng_mi_heap_collect(obj, false), NG_OK);
    CHECK_NE(l->waiting->qsbr_goal, 0);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_threads_reclaimed_waiting_page_keeps_its_goal)
{
    INTERP_SCENE(in);
    reader r;
    reader_start(&r, in); /* holds every goal back */
    leaver l = {.in = in};
    alloc_run_thread(leaver_main, &l);
    REQUIRE(l.waiting_blocks != NULL);
    ng_mi_stats pool = alloc_interp_stats(in);
    CHECK_GE(pool.pages_abandoned, 2); /* the waiting object page and the MEM page */
    CHECK_GE(pool.segments_abandoned, 2);
    CHECK_GE(pool.pages_waiting, 1);
    CHECK_NE(l.waiting->qsbr_goal, 0); /* kept while abandoned (M2) */
    uint64_t goal = l.waiting->qsbr_goal;

    ng_tstate *ts = attached_state(in);
    REQUIRE(ts != NULL);
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    REQUIRE(obj != NULL && mem != NULL);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK_STATUS(ng_mi_heap_collect(mem, true), NG_OK);
    ng_mi_stats after = alloc_interp_stats(in);
    CHECK_EQ(after.pages_abandoned, 0);
    CHECK_GE(after.segments_reclaimed, pool.segments_reclaimed + 2);
    CHECK_EQ(l.waiting->qsbr_goal, goal);
    CHECK_EQ(alloc_heap_stats(obj).pages_waiting, 1);
    /* Same class: the reclaimed waiting page is not handed out before its goal. */
    size_t n = l.n_waiting * 2;
    void **mine = calloc(n, sizeof *mine);
    size_t landed = 0;
    for (size_t i = 0; i < n; i++) {
        mine[i] = ng_mi_heap_malloc(obj, 96);
        landed += in_page(mine[i], l.waiting);
        alloc_fill(mine[i], 0, 96, 1);
    }
    CHECK_EQ(landed, 0);
    size_t intact = 0;
    for (size_t i = 0; i < l.n_waiting; i++)
        intact += alloc_check(l.waiting_blocks[i], 0, NG_MI_OBJECT_PREFIX, 21);
    CHECK_EQ(intact, l.n_waiting);
    /* The left-behind MEM blocks are ours now. */
    for (int i = 0; i < 16; i++) {
        CHECK(alloc_check(l.mem_blocks[i], 0, 100, 22));
        CHECK_STATUS(ng_mi_free(l.mem_blocks[i]), NG_OK);
    }
    /* Once the reader reports, the page goes back to its segment. */
    reader_cmd(&r, 1, 2);
    alloc_quiesce(ts);
    CHECK_STATUS(ng_mi_heap_collect(obj, false), NG_OK);
    ng_mi_stats done = alloc_heap_stats(obj);
    CHECK_EQ(done.pages_waiting, 0);
    CHECK_GE(done.pages_released_after_goal, 1);
    for (size_t i = 0; i < n; i++)
        ng_mi_free(mine[i]);
    free(mine);
    free(l.waiting_blocks);
    reader_cmd(&r, 2, 3);
    join_thread(r.thread);
    end_scene(in, ts);
}

/* ==== A thread without an id frees into an abandoned segment =========================================== */

typedef struct idless_free {
    void *block;
    bool had_no_id; /* the thread's id was not assigned when it freed */
    int status;
} idless_free;

typedef struct one_block {
    ng_interp *in;
    void *block;
} one_block;

static void *leave_one_block(void *arg)
{
    one_block *o = arg;
    ng_tstate *ts = attached_state(o->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    if (obj != NULL)
        o->block = ng_mi_heap_malloc(obj, 64);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

/* A plain thread: no nogil call before the free. */
static void *free_without_an_id(void *arg)
{
    idless_free *f = arg;
    f->had_no_id = ng_thread_id_cached == 0;
    f->status = ng_mi_free(f->block);
    return NULL;
}

TEST(alloc_threads_free_by_a_thread_without_an_id_into_an_abandoned_segment)
{
    /* The inline free compares the segment's owner with the caller's thread-local id word
     * as it is, unassigned (0) included: an abandoned segment must hold a value no thread
     * has, or such a free would take the owner's unsynchronised path. It must push onto the
     * page's thread_free list instead. */
    INTERP_SCENE(in);
    one_block o = {.in = in};
    alloc_run_thread(leave_one_block, &o);
    void *block = o.block;
    REQUIRE(block != NULL);
    ng_mi_segment *seg = ng_mi_segment_of(block);
    ng_mi_page *page = alloc_page_of(block);
    CHECK_EQ(ng_atomic_load(&seg->thread_id, NG_RELAXED), NG_MI_NO_THREAD);
    CHECK_GE(alloc_interp_stats(in).pages_abandoned, 1);

    idless_free f = {.block = block};
    alloc_run_thread(free_without_an_id, &f);
    CHECK(f.had_no_id);
    CHECK_STATUS(f.status, NG_OK);
    uintptr_t tf = ng_atomic_load(&page->thread_free, NG_ACQUIRE);
    CHECK_PTR_EQ((void *)(tf & ~NG_MI_DELAY_MASK), block);
    CHECK(page->local_free != block);

    /* Reclaimed, the block is collected as free, and the page is empty. */
    ng_tstate *ts = attached_state(in);
    REQUIRE(ts != NULL);
    ng_mi_heap *obj = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    REQUIRE(obj != NULL);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK_EQ(alloc_interp_stats(in).pages_abandoned, 0);
    CHECK_EQ(alloc_heap_stats(obj).blocks_in_use, 0);
    end_scene(in, ts);
}

/* ==== Interpreter deletion ========================================================================== */

static void *leave_everything(void *arg)
{
    ng_tstate *ts = attached_state(arg);
    if (ts == NULL)
        return NULL;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        ng_mi_heap *h = alloc_heap(ts, (ng_mi_heap_kind)k);
        for (int i = 0; i < 300; i++)
            (void)ng_mi_heap_malloc(h, (size_t)(16 + i * 37));
        (void)ng_mi_heap_malloc(h, 5u << 20);
        (void)ng_mi_heap_malloc(h, 300000);
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_threads_interpreter_deletion_unmaps_every_segment)
{
    uint64_t before = ng_atomic_load(&ng_mi_os_mapped_bytes, NG_SEQ_CST);
    INTERP_SCENE(in);
    alloc_run_thread(leave_everything, in);
    alloc_run_thread(leave_everything, in);
    ng_mi_stats st = alloc_interp_stats(in);
    CHECK_GE(st.segments, 8);
    CHECK_GE(st.huge_blocks, 8);
    CHECK_GT(st.pages_abandoned, 0);
    CHECK_EQ(st.blocks_in_use, 2 * 4 * 302);
    CHECK_GT(ng_atomic_load(&ng_mi_os_mapped_bytes, NG_SEQ_CST), before);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_EQ(ng_atomic_load(&ng_mi_os_mapped_bytes, NG_SEQ_CST), before);
}

/* ==== fork() ========================================================================================== */

#define FORK_BLOCKS 200

typedef struct fork_holder {
    ng_interp *in;
    ng_event ready, done;
    uint64_t *blocks[FORK_BLOCKS];
    uint64_t seed;
} fork_holder;

static void *fork_holder_main(void *arg)
{
    fork_holder *h = arg;
    ng_tstate *ts = attached_state(h->in);
    if (ts == NULL) {
        ng_event_notify(&h->ready);
        return NULL;
    }
    uint64_t rng = h->seed;
    for (int i = 0; i < FORK_BLOCKS; i++) {
        ng_mi_heap *heap = alloc_heap(ts, (ng_mi_heap_kind)(i % NG_MI_HEAP_COUNT));
        h->blocks[i] = stress_block(heap, &rng);
    }
    ng_mi_free(h->blocks[0]);
    h->blocks[0] = ng_mi_heap_malloc(alloc_heap(ts, NG_MI_HEAP_MEM), 4u << 20);
    h->blocks[0][0] = 4u << 20;
    alloc_fill(h->blocks[0], 8, 256, 4u << 20);
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    ng_event_notify(&h->ready);
    ng_event_wait(&h->done);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    for (int i = 0; i < FORK_BLOCKS; i++) {
        CHECK(stress_check(h->blocks[i]));
        CHECK_STATUS(ng_mi_free(h->blocks[i]), NG_OK);
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

enum {
    FORK_ADOPTED = 1 << 0,  /* no abandoned page left after the fork hook */
    FORK_PATTERN = 1 << 1,  /* the dead threads' blocks are intact */
    FORK_FREE = 1 << 2,     /* ... and can be freed */
    FORK_ALLOC = 1 << 3,    /* the survivor allocates */
    FORK_STATS = 1 << 4,    /* and the counts add up */
};

static int fork_child(ng_interp *in, ng_tstate *me, fork_holder *holders, int n,
                      uint64_t *own, size_t n_own)
{
    int bad = 0;
    ng_mi_stats st;
    if (ng_mi_interp_get_stats(in, &st) != NG_OK || st.pages_abandoned != 0)
        bad |= FORK_ADOPTED;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < FORK_BLOCKS; i++) {
            if (!stress_check(holders[t].blocks[i]))
                bad |= FORK_PATTERN;
            if (ng_mi_free(holders[t].blocks[i]) != NG_OK)
                bad |= FORK_FREE;
        }
    ng_mi_heap *h;
    if (ng_mi_heap_of(me, NG_MI_HEAP_OBJECT, &h) != NG_OK)
        return bad | FORK_ALLOC;
    for (int i = 0; i < 1000; i++) {
        void *p = ng_mi_heap_malloc(h, (size_t)(16 + i));
        if (p == NULL) {
            bad |= FORK_ALLOC;
            break;
        }
        memset(p, 1, (size_t)(16 + i));
        ng_mi_free(p);
    }
    for (size_t i = 0; i < n_own; i++)
        if (!alloc_check(own, 0, 64, 9))
            bad |= FORK_PATTERN;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        ng_mi_heap *hk;
        if (ng_mi_heap_of(me, (ng_mi_heap_kind)k, &hk) == NG_OK)
            ng_mi_heap_collect(hk, true);
    }
    if (ng_mi_interp_get_stats(in, &st) != NG_OK || st.blocks_in_use != 1 ||
        st.pages_abandoned != 0)
        bad |= FORK_STATS;
    return bad;
}

TEST(alloc_threads_fork_child_adopts_dead_threads_segments)
{
    ALLOC_SCENE(in, me, mem, NG_MI_HEAP_MEM);
    uint64_t *own = ng_mi_heap_malloc(mem, 64);
    REQUIRE(own != NULL);
    alloc_fill(own, 0, 64, 9);
    enum { T = 3 };
    fork_holder holders[T];
    pthread_t th[T];
    memset(holders, 0, sizeof holders);
    for (int t = 0; t < T; t++) {
        holders[t].in = in;
        holders[t].seed = 77 + (uint64_t)t;
        th[t] = spawn_thread(fork_holder_main, &holders[t]);
        ng_event_wait(&holders[t].ready);
    }
    for (int t = 0; t < T; t++)
        REQUIRE(holders[t].blocks[FORK_BLOCKS - 1] != NULL);

    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(fork_child(in, me, holders, T, own, 1));
    }
    REQUIRE(pid > 0);
    int raw = wait_child(pid, 30000);
    CHECK(raw != -1 && WIFEXITED(raw));
    int status = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    CHECK_EQ(status, 0);
    static const char *const names[] = {"adopted", "patterns", "frees", "allocation", "stats"};
    for (int bit = 0; bit < 5 && status > 0; bit++)
        if (status & (1 << bit))
            harness_fail(__FILE__, __LINE__, "child: %s failed", names[bit]);
    /* The parent's threads are unaffected. */
    for (int t = 0; t < T; t++)
        ng_event_notify(&holders[t].done);
    for (int t = 0; t < T; t++)
        join_thread(th[t]);
    CHECK(alloc_check(own, 0, 64, 9));
    ng_mi_free(own);
    end_scene(in, me);
}
