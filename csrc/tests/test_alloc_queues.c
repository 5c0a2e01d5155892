/* The page allocator's queues under random use. After every operation: each bin queue is a
 * well-linked list of in-use, queued pages of that bin and heap, none marked full, with the
 * waiting pages at its tail and never reachable from direct[]; the full queue holds only
 * pages marked full; no block is handed out from a page waiting for its QSBR goal or owned
 * by another heap. The operations mix the owner's frees (which feed pages sent round their
 * bin by the slow path's scan), other threads' frees, mass frees (pages emptying and
 * waiting), quiescent states and collections. */
#include <stdio.h>

#include "alloc_helpers.h"

static bool queue_holds(const ng_mi_page_queue *q, const ng_mi_page *page)
{
    for (const ng_mi_page *p = q->first; p != NULL; p = p->next)
        if (p == page)
            return true;
    return false;
}

/* Checks the invariants of heap h; on failure says which in `why`. */
static bool queues_consistent(ng_mi_heap *h, char *why, size_t cap, uint64_t *rotated_seen)
{
    ng_mi_heap_data *hd = ng_mi_heap_data_of(h);
    for (size_t b = 0; b < NG_MI_BIN_COUNT; b++) {
        const ng_mi_page *prev = NULL;
        bool waiting_seen = false;
        for (const ng_mi_page *p = hd->bins[b].first; p != NULL; prev = p, p = p->next) {
            /* Waiting pages are the queue's tail: a scan takes the pages in use first. */
            bool waiting = p->reserved_flags & NG_MI_PF_QSBR_LINKED;
            if (waiting_seen && !waiting) {
                snprintf(why, cap, "bin %zu: page %p in use behind a waiting page", b,
                         (const void *)p);
                return false;
            }
            waiting_seen |= waiting;
            if (p->prev != prev || !p->in_use || p->bin != b ||
                !(p->reserved_flags & NG_MI_PF_QUEUED) || (p->flags & NG_MI_PAGE_IN_FULL) ||
                ng_atomic_load((ng_mi_heap **)&p->heap, NG_RELAXED) != h) {
                snprintf(why, cap, "bin %zu: page %p misplaced (flags %x, private flags %x)", b,
                         (const void *)p, p->flags, p->reserved_flags);
                return false;
            }
            if (p->next == NULL && hd->bins[b].last != p) {
                snprintf(why, cap, "bin %zu: last is not the tail", b);
                return false;
            }
            *rotated_seen += (p->reserved_flags & NG_MI_PF_ROTATED) != 0;
        }
    }
    for (const ng_mi_page *p = hd->full.first; p != NULL; p = p->next)
        if (!(p->flags & NG_MI_PAGE_IN_FULL) ||
            (p->reserved_flags & (NG_MI_PF_ROTATED | NG_MI_PF_QSBR_LINKED))) {
            snprintf(why, cap, "full queue: page %p flags %x, private flags %x", (const void *)p,
                     p->flags, p->reserved_flags);
            return false;
        }
    for (size_t w = 0; w <= NG_MI_DIRECT_WSIZE; w++) {
        ng_mi_page *p = h->direct[w];
        if (p == &ng_mi_empty_page)
            continue;
        size_t bin = ng_mi_direct_bin[h->kind][w];
        /* Not necessarily the first page (the scan's rotation leaves direct[] alone), but
         * one of the bin's, and never a waiting one. */
        if (!queue_holds(&hd->bins[bin], p) || p->qsbr_goal != 0 ||
            (p->reserved_flags & NG_MI_PF_QSBR_LINKED)) {
            snprintf(why, cap, "direct[%zu] -> %p: not a usable page of bin %zu", w, (void *)p,
                     bin);
            return false;
        }
    }
    return true;
}

typedef struct foreign_batch {
    void **blocks;
    size_t n;
} foreign_batch;

static void *free_batch_main(void *arg)
{
    foreign_batch *fb = arg;
    for (size_t i = 0; i < fb->n; i++)
        ng_mi_free(fb->blocks[i]);
    return NULL;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

#define Q_LIVE 4000
#define Q_FOREIGN 512
static void *q_live[Q_LIVE];
static size_t q_size[Q_LIVE];

static void random_use(ng_mi_heap_kind kind, uint64_t seed, int iters)
{
    ALLOC_SCENE(in, ts, h, kind);
    static const size_t sizes[] = {16, 24, 48, 64, 100, 256, 512, 1000, 1024};
    void *foreign[Q_FOREIGN];
    size_t n_foreign = 0, prefix = h->prefix;
    uint64_t rng = seed, rotated_seen = 0;
    char why[200];
    memset(q_live, 0, sizeof q_live);
    for (int it = 0; it < iters; it++) {
        uint64_t r = xorshift(&rng);
        size_t i = r % Q_LIVE;
        int op = (int)((r >> 20) % 1000);
        bool ok = true;
        if (op < 3) { /* free two thirds: pages empty (and, in object heaps, wait) */
            for (size_t j = 0; j < Q_LIVE && ok; j++)
                if (q_live[j] != NULL && xorshift(&rng) % 3 != 0) {
                    ok = alloc_check(q_live[j], prefix, q_size[j], 7);
                    ng_mi_free(q_live[j]);
                    q_live[j] = NULL;
                }
        }
        else if (op < 6) {
            alloc_quiesce(ts);
        }
        else if (op < 8) {
            CHECK_STATUS(ng_mi_heap_collect(h, false), NG_OK);
        }
        else if (q_live[i] != NULL) {
            ok = alloc_check(q_live[i], prefix, q_size[i], 7);
            if (op < 300)
                foreign[n_foreign++] = q_live[i]; /* freed by another thread, later */
            else
                ng_mi_free(q_live[i]);
            q_live[i] = NULL;
        }
        else {
            size_t size = sizes[(r >> 40) % (sizeof sizes / sizeof sizes[0])];
            void *p = ng_mi_heap_malloc(h, size);
            REQUIRE(p != NULL);
            ng_mi_page *page = alloc_page_of(p);
            if (page->qsbr_goal != 0 || (page->reserved_flags & NG_MI_PF_QSBR_LINKED) ||
                !page->in_use || ng_atomic_load(&page->heap, NG_RELAXED) != h) {
                harness_fail(__FILE__, __LINE__, "op %d: block %p from a waiting or foreign page",
                             it, p);
                break;
            }
            q_size[i] = size > prefix ? size : prefix;
            alloc_fill(p, prefix, q_size[i], 7);
            q_live[i] = p;
        }
        if (!ok) {
            harness_fail(__FILE__, __LINE__, "op %d: a live block's pattern changed", it);
            break;
        }
        if (n_foreign == Q_FOREIGN) {
            foreign_batch fb = {foreign, n_foreign};
            alloc_run_thread(free_batch_main, &fb);
            n_foreign = 0;
        }
        if (!queues_consistent(h, why, sizeof why, &rotated_seen)) {
            harness_fail(__FILE__, __LINE__, "op %d: %s", it, why);
            break;
        }
    }
    foreign_batch fb = {foreign, n_foreign};
    alloc_run_thread(free_batch_main, &fb);
    for (size_t j = 0; j < Q_LIVE; j++)
        if (q_live[j] != NULL)
            ng_mi_free(q_live[j]);
    /* The scene went through the state the test is about. */
    CHECK_GT(rotated_seen, 0);
    end_scene(in, ts);
}

TEST(alloc_queues_keep_their_invariants_under_random_use_object_heap)
{
    for (uint64_t s = 1; s <= 3; s++)
        random_use(NG_MI_HEAP_OBJECT, s * UINT64_C(0x9e3779b97f4a7c15), ALLOC_SCALED(200000));
}

TEST(alloc_queues_keep_their_invariants_under_random_use_mem_heap)
{
    for (uint64_t s = 1; s <= 2; s++)
        random_use(NG_MI_HEAP_MEM, s * UINT64_C(0x51ed270b27) + 3, ALLOC_SCALED(200000));
}
