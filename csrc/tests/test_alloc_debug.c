/* The checked free of NG_MI_DEBUG builds (the TSan and ASan runners): double frees are found
 * on every thread, racing ones included (one live bit per block, a live flag per huge
 * segment), foreign pointers are still NG_EINVAL, and only the owner may allocate. The
 * optimised build has no checks: the tests are compiled out there. */
#include "alloc_helpers.h"

#ifdef NG_MI_DEBUG

#include <pthread.h>

typedef struct free_job {
    void *p;
    int st;
    /* For racing frees: both spin until go is set. */
    uint32_t *go;
} free_job;

static void *free_main(void *arg)
{
    free_job *j = arg;
    if (j->go != NULL)
        while (!ng_atomic_load(j->go, NG_ACQUIRE))
            ;
    j->st = ng_mi_free(j->p);
    return NULL;
}

/* ng_mi_free(p) on a new thread (no thread state). */
static int free_elsewhere(void *p)
{
    free_job j = {p, -1, NULL};
    alloc_run_thread(free_main, &j);
    return j.st;
}

static bool all_distinct(void **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t k = i + 1; k < n; k++)
            if (v[i] == v[k])
                return false;
    return true;
}

/* A second free from another thread (the owner is alive and idle) is NG_ESTATE and leaves
 * the heap as it was: collected stats unchanged, every block handed out once, the patterns of
 * the live blocks intact. Before the live bits it returned NG_OK and pushed the block onto
 * thread_free a second time, so the owner later handed it out twice. */
TEST(alloc_debug_double_free_by_another_thread)
{
    TSTATE_SCENE(in, ts);
    ng_mi_heap_kind kinds[] = {NG_MI_HEAP_MEM, NG_MI_HEAP_OBJECT};
    for (size_t k = 0; k < 2; k++) {
        ng_mi_heap *h = alloc_heap(ts, kinds[k]);
        REQUIRE(h != NULL);
        size_t pre = h->prefix;
        enum { N = 64, SZ = 64 };
        void *v[2 * N];
        for (size_t i = 0; i < N; i++) {
            v[i] = ng_mi_heap_malloc(h, SZ); /* the inline path (the generic one in debug) */
            REQUIRE(v[i] != NULL);
            alloc_fill(v[i], pre, SZ, 1);
        }
        void *p = v[N / 2];
        CHECK_STATUS(free_elsewhere(p), NG_OK);
        CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        ng_mi_stats before = alloc_heap_stats(h);
        CHECK_EQ(before.blocks_in_use, N - 1);
        /* The double free, from two other threads and from the owner. */
        CHECK_STATUS(free_elsewhere(p), NG_ESTATE);
        CHECK_STATUS(free_elsewhere(p), NG_ESTATE);
        CHECK_STATUS(ng_mi_free(p), NG_ESTATE);
        CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        ng_mi_stats after = alloc_heap_stats(h);
        CHECK_EQ(after.blocks_in_use, before.blocks_in_use);
        CHECK_EQ(after.bytes_in_use, before.bytes_in_use);
        CHECK_EQ(after.pages_in_use, before.pages_in_use);
        /* Allocate again: p comes back once, nothing live is handed out. */
        v[N / 2] = v[N - 1];
        size_t live = N - 1;
        for (size_t i = 0; i < N + 1; i++) {
            v[live] = ng_mi_heap_malloc(h, SZ);
            REQUIRE(v[live] != NULL);
            alloc_fill(v[live], pre, SZ, 2);
            live++;
        }
        CHECK(all_distinct(v, live));
        for (size_t i = 0; i < live; i++)
            CHECK(alloc_check(v[i], pre, SZ, i < N - 1 ? 1 : 2));
        for (size_t i = 0; i < live; i++)
            CHECK_STATUS(ng_mi_free(v[i]), NG_OK);
        CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 0);
    }
    end_scene(in, ts);
}

typedef struct batch {
    free_job *jobs;
    size_t n;
    uint32_t *go;
} batch;

static void *batch_main(void *arg)
{
    batch *b = arg;
    while (!ng_atomic_load(b->go, NG_ACQUIRE))
        ;
    for (size_t i = 0; i < b->n; i++)
        b->jobs[i].st = ng_mi_free(b->jobs[i].p);
    return NULL;
}

/* Two threads race to free the same blocks, 10,000 blocks in all: exactly one free of each
 * block returns NG_OK, the other NG_ESTATE, and the heap ends empty. A check that reads the
 * free lists instead of taking a bit passes both (and cannot even look off the owner). */
TEST(alloc_debug_racing_double_frees_one_winner)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_MEM);
    enum { ROUND = 500, TOTAL = 10000 };
    void **v = calloc(ROUND, sizeof *v);
    REQUIRE(v != NULL);
    long wins = 0, bad = 0;
    for (int r = 0; r < TOTAL / ROUND; r++) {
        for (size_t i = 0; i < ROUND; i++) {
            v[i] = ng_mi_heap_malloc(h, 8 + (size_t)(r % 8) * 8);
            REQUIRE(v[i] != NULL);
        }
        /* Each racer frees the whole batch; the start flag lines them up. */
        uint32_t go = 0;
        static free_job jobs[2][ROUND];
        pthread_t th[2];
        for (int t = 0; t < 2; t++)
            for (size_t i = 0; i < ROUND; i++)
                jobs[t][i] = (free_job){v[i], -1, NULL};
        batch b[2] = {{jobs[0], ROUND, &go}, {jobs[1], ROUND, &go}};
        for (int t = 0; t < 2; t++)
            th[t] = spawn_thread(batch_main, &b[t]);
        ng_atomic_store(&go, 1, NG_RELEASE);
        join_thread(th[0]);
        join_thread(th[1]);
        for (size_t i = 0; i < ROUND; i++) {
            int a = jobs[0][i].st, c = jobs[1][i].st;
            if ((a == NG_OK) + (c == NG_OK) != 1 || (a != NG_ESTATE && c != NG_ESTATE))
                bad++;
            wins += (a == NG_OK) + (c == NG_OK);
        }
        CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        if (!CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 0))
            break;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(wins, TOTAL);
    /* The heap still hands out distinct blocks. */
    for (size_t i = 0; i < ROUND; i++)
        v[i] = ng_mi_heap_malloc(h, 16);
    CHECK(all_distinct(v, ROUND));
    for (size_t i = 0; i < ROUND; i++)
        CHECK_STATUS(ng_mi_free(v[i]), NG_OK);
    free(v);
    end_scene(in, ts);
}

/* Two threads race to free one huge block: one NG_OK. The other gets NG_ESTATE (object
 * heaps: the segment waits for its goal) or, for MEM, NG_EINVAL once the segment is
 * unmapped. Both passing the old check (a goal written by the first free under the lock)
 * freed the segment twice. */
TEST(alloc_debug_racing_huge_frees_one_winner)
{
    TSTATE_SCENE(in, ts);
    ng_mi_heap_kind kinds[] = {NG_MI_HEAP_MEM, NG_MI_HEAP_OBJECT};
    int rounds = SANITIZED ? 100 : 300;
    for (size_t k = 0; k < 2; k++) {
        ng_mi_heap *h = alloc_heap(ts, kinds[k]);
        REQUIRE(h != NULL);
        long bad = 0;
        for (int r = 0; r < rounds && bad == 0; r++) {
            void *p = ng_mi_heap_malloc(h, NG_MI_LARGE_MAX + 100);
            REQUIRE(p != NULL);
            uint32_t go = 0;
            free_job j[2] = {{p, -1, &go}, {p, -1, &go}};
            pthread_t th[2] = {spawn_thread(free_main, &j[0]), spawn_thread(free_main, &j[1])};
            ng_atomic_store(&go, 1, NG_RELEASE);
            join_thread(th[0]);
            join_thread(th[1]);
            int oks = (j[0].st == NG_OK) + (j[1].st == NG_OK);
            int loser = j[0].st == NG_OK ? j[1].st : j[0].st;
            if (oks != 1 || !(loser == NG_ESTATE ||
                              (kinds[k] == NG_MI_HEAP_MEM && loser == NG_EINVAL))) {
                CHECK_EQ(oks, 1);
                CHECK(loser == NG_ESTATE || loser == NG_EINVAL);
                bad++;
            }
            if (kinds[k] != NG_MI_HEAP_MEM) /* still waiting: a third free is a double free */
                CHECK_STATUS(ng_mi_free(p), NG_ESTATE);
            if (r % 16 == 0)
                alloc_quiesce(ts);
        }
        CHECK_EQ(alloc_heap_stats(h).huge_blocks, 0);
    }
    alloc_quiesce(ts);
    end_scene(in, ts);
}

/* A thread allocates, frees one block itself, and goes away (its pages are abandoned). The
 * double frees of its blocks from another thread (no owner any more) are NG_ESTATE, and the
 * thread that reclaims the segment hands every block out once. */
typedef struct abandon_job {
    ng_interp *in;
    ng_mi_heap_kind kind;
    void *v[32];
    void *freed;
    bool release;
} abandon_job;

static void *abandon_main(void *arg)
{
    abandon_job *j = arg;
    ng_tstate *ts = attached_state(j->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *h = alloc_heap(ts, j->kind);
    if (h == NULL)
        return NULL;
    for (size_t i = 0; i < 32; i++) {
        j->v[i] = ng_mi_heap_malloc(h, 48);
        if (j->v[i] != NULL)
            alloc_fill(j->v[i], h->prefix, 48, 7);
    }
    j->freed = j->v[31];
    CHECK_STATUS(ng_mi_free(j->freed), NG_OK);
    j->v[31] = NULL;
    if (j->release)
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL; /* otherwise the thread's exit releases the state */
}

TEST(alloc_debug_double_free_after_abandon)
{
    INTERP_SCENE(in);
    ng_mi_heap_kind kinds[] = {NG_MI_HEAP_MEM, NG_MI_HEAP_OBJECT};
    for (int k = 0; k < 2; k++) {
        for (int rel = 0; rel < 2; rel++) {
            abandon_job j = {.in = in, .kind = kinds[k], .release = rel};
            alloc_run_thread(abandon_main, &j);
            for (size_t i = 0; i < 31; i++)
                REQUIRE(j.v[i] != NULL);
            size_t pre = kinds[k] == NG_MI_HEAP_MEM ? 0 : NG_MI_OBJECT_PREFIX;
            CHECK_GT(alloc_interp_stats(in).pages_abandoned, 0);
            /* The block the owner freed before it went away. */
            CHECK_STATUS(ng_mi_free(j.freed), NG_ESTATE);
            CHECK_STATUS(free_elsewhere(j.freed), NG_ESTATE);
            /* A live block: freed once here, then again here and elsewhere. */
            void *p = j.v[0];
            CHECK_STATUS(ng_mi_free(p), NG_OK);
            CHECK_STATUS(ng_mi_free(p), NG_ESTATE);
            CHECK_STATUS(free_elsewhere(p), NG_ESTATE);
            /* Reclaim the segment and allocate from it: every block handed out once. */
            ng_tstate *ts = attached_state(in);
            REQUIRE(ts != NULL);
            ng_mi_heap *h = alloc_heap(ts, kinds[k]);
            REQUIRE(h != NULL);
            CHECK_STATUS(ng_mi_heap_collect(h, true), NG_OK);
            CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 30);
            void *v[30 + 40];
            size_t n = 0;
            for (size_t i = 1; i < 31; i++)
                v[n++] = j.v[i];
            for (size_t i = 0; i < 40; i++) {
                v[n] = ng_mi_heap_malloc(h, 48);
                REQUIRE(v[n] != NULL);
                alloc_fill(v[n], pre, 48, 8);
                n++;
            }
            CHECK(all_distinct(v, n));
            for (size_t i = 0; i < n; i++)
                CHECK(alloc_check(v[i], pre, 48, i < 30 ? 7 : 8));
            for (size_t i = 0; i < n; i++)
                CHECK_STATUS(ng_mi_free(v[i]), NG_OK);
            CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 0);
            alloc_quiesce(ts);
            CHECK_STATUS(ng_tstate_release(ts), NG_OK);
        }
    }
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* Pointers the allocator did not hand out stay NG_EINVAL, on the owner and elsewhere, and
 * leave everything untouched. */
TEST(alloc_debug_foreign_pointers_still_einval)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_MEM);
    void *p = ng_mi_heap_malloc(h, 64);
    void *big = ng_mi_heap_malloc(h, NG_MI_LARGE_MAX + 1);
    REQUIRE(p != NULL && big != NULL);
    alloc_fill(p, 0, 64, 3);
    long stack_word = 42;
    void *libc = malloc(128);
    REQUIRE(libc != NULL);
    void *bad[] = {&stack_word, libc, (char *)p + 8, (char *)p + 1, (char *)big + 4096,
                   (char *)big + 16};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(ng_mi_free(bad[i]), NG_EINVAL);
        CHECK_STATUS(free_elsewhere(bad[i]), NG_EINVAL);
    }
    CHECK_EQ(stack_word, 42);
    CHECK(alloc_check(p, 0, 64, 3));
    free(libc);
    CHECK_EQ(alloc_heap_stats(h).blocks_in_use, 2);
    CHECK_STATUS(ng_mi_free(p), NG_OK);
    CHECK_STATUS(ng_mi_free(big), NG_OK);
    end_scene(in, ts);
}

/* Only the owner allocates: any other thread gets NULL with errno EPERM, whatever the size,
 * and the heap is unchanged. */
typedef struct wrong_job {
    ng_mi_heap *h;
    void *p[4];
    int err[4];
} wrong_job;

static void *wrong_main(void *arg)
{
    wrong_job *j = arg;
    size_t sizes[] = {16, 4000, NG_MI_LARGE_MAX + 1};
    for (int i = 0; i < 3; i++) {
        errno = 0;
        j->p[i] = ng_mi_heap_malloc(j->h, sizes[i]);
        j->err[i] = errno;
    }
    errno = 0;
    j->p[3] = ng_mi_heap_calloc(j->h, 4, 8);
    j->err[3] = errno;
    return NULL;
}

TEST(alloc_debug_wrong_thread_malloc_eperm)
{
    ALLOC_SCENE(in, ts, h, NG_MI_HEAP_OBJECT);
    void *mine = ng_mi_heap_malloc(h, 16); /* a page of the class: the fast path would hit */
    REQUIRE(mine != NULL);
    ng_mi_stats before = alloc_heap_stats(h);
    wrong_job j = {.h = h};
    alloc_run_thread(wrong_main, &j);
    for (int i = 0; i < 4; i++) {
        CHECK(j.p[i] == NULL);
        CHECK_EQ(j.err[i], EPERM);
        if (j.p[i] != NULL)
            ng_mi_free(j.p[i]);
    }
    ng_mi_stats after = alloc_heap_stats(h);
    CHECK_EQ(after.blocks_in_use, before.blocks_in_use);
    CHECK_EQ(after.segments, before.segments);
    CHECK_STATUS(ng_mi_free(mine), NG_OK);
    end_scene(in, ts);
}

#else /* !NG_MI_DEBUG */

#include <stdio.h>

TEST(alloc_debug_skipped_without_ng_mi_debug)
{
    fprintf(stderr, "test_alloc_debug.c: skipped (NG_MI_DEBUG is not defined: the TSan and ASan "
                    "runners check double frees)\n");
}

#endif
