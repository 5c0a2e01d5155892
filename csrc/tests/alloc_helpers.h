/* Helpers shared by the page allocator tests (test_alloc*.c), on top of the thread-state
 * tests' (tstate_helpers.h: new_interp, attached_state, TSTATE_SCENE, end_scene). */
#ifndef NG_TEST_ALLOC_HELPERS_H
#define NG_TEST_ALLOC_HELPERS_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_internal.h"
#include "harness.h"
#include "tstate_helpers.h" /* the interpreter and state of a scene, SANITIZED */

/* n in the optimised build, n / 4 (at least 1) under the sanitizers (slower loops, and ASan's
 * shadow memory for every block). */
#define ALLOC_SCALED(n) (SANITIZED ? ((n) / 4 > 0 ? (n) / 4 : 1) : (n))

static inline ng_mi_heap *alloc_heap(ng_tstate *ts, ng_mi_heap_kind kind)
{
    ng_mi_heap *h = NULL;
    if (!CHECK_STATUS(ng_mi_heap_of(ts, kind, &h), NG_OK))
        return NULL;
    return h;
}

/* The usual scene of a test: an interpreter, the calling thread's attached state
 * (TSTATE_SCENE) and one of its heaps, declared under the given names; the test returns
 * (failure recorded) when one of them cannot be had. end_scene ends it. */
#define ALLOC_SCENE(in, ts, heap, kind)                                                 \
    TSTATE_SCENE(in, ts);                                                               \
    ng_mi_heap *heap = alloc_heap(ts, kind);                                            \
    REQUIRE(heap != NULL)

static inline ng_mi_stats alloc_heap_stats(ng_mi_heap *h)
{
    ng_mi_stats st;
    memset(&st, 0, sizeof st);
    CHECK_STATUS(ng_mi_heap_get_stats(h, &st), NG_OK);
    return st;
}

static inline ng_mi_stats alloc_interp_stats(ng_interp *in)
{
    ng_mi_stats st;
    memset(&st, 0, sizeof st);
    CHECK_STATUS(ng_mi_interp_get_stats(in, &st), NG_OK);
    return st;
}

/* A byte pattern derived from the block's address and a tag, written from `from` on (object
 * heaps keep their prefix for the tests that check it). */
static inline uint8_t alloc_pattern_byte(const void *p, size_t i, uint32_t tag)
{
    uint64_t x = ((uint64_t)(uintptr_t)p >> 3) * UINT64_C(0x9e3779b97f4a7c15) + i + tag;
    return (uint8_t)(x ^ (x >> 29));
}

static inline void alloc_fill(void *p, size_t from, size_t n, uint32_t tag)
{
    uint8_t *b = p;
    for (size_t i = from; i < n; i++)
        b[i] = alloc_pattern_byte(p, i, tag);
}

static inline bool alloc_check(const void *p, size_t from, size_t n, uint32_t tag)
{
    const uint8_t *b = p;
    for (size_t i = from; i < n; i++)
        if (b[i] != alloc_pattern_byte(p, i, tag))
            return false;
    return true;
}

/* The page of a block (tests look at its private fields). */
static inline ng_mi_page *alloc_page_of(const void *p)
{
    return ng_mi_page_of(ng_mi_segment_of(p), p);
}

/* Runs fn(arg) on a new thread and waits for it. */
static inline void *alloc_run_thread(void *(*fn)(void *), void *arg)
{
    return join_thread(spawn_thread(fn, arg));
}

/* Makes every goal so far reachable: the caller reports, after an advance. Other threads of
 * the interpreter must be detached or report themselves. */
static inline void alloc_quiesce(ng_tstate *ts)
{
    ng_qsbr_advance(&ts->interp->qsbr);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
}

/* ---- A reader thread: attached, holds on until told to report ------------------------------- */

typedef struct reader {
    ng_interp *in;
    uint32_t cmd;  /* 1: report a quiescent state, 2: release and exit */
    uint32_t ack;  /* 1: attached (holding), 2: reported, 3: gone */
    pthread_t thread;
} reader;

static inline void *reader_main(void *arg)
{
    reader *r = arg;
    ng_tstate *ts = attached_state(r->in);
    if (ts == NULL) {
        ng_atomic_store(&r->ack, 3, NG_SEQ_CST);
        return NULL;
    }
    ng_atomic_store(&r->ack, 1, NG_SEQ_CST);
    uint32_t done = 0;
    for (;;) {
        uint32_t c = ng_atomic_load(&r->cmd, NG_SEQ_CST);
        if (c == 1 && done == 0) {
            CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
            done = 1;
            ng_atomic_store(&r->ack, 2, NG_SEQ_CST);
        }
        if (c == 2)
            break;
        sleep_us(200); /* no report while sleeping: the slot stays online and behind */
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    ng_atomic_store(&r->ack, 3, NG_SEQ_CST);
    return NULL;
}

static inline void reader_start(reader *r, ng_interp *in)
{
    memset(r, 0, sizeof *r);
    r->in = in;
    r->thread = spawn_thread(reader_main, r);
    SPIN_UNTIL(ng_atomic_load(&r->ack, NG_SEQ_CST) != 0);
}

static inline void reader_cmd(reader *r, uint32_t cmd, uint32_t want_ack)
{
    ng_atomic_store(&r->cmd, cmd, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&r->ack, NG_SEQ_CST) >= want_ack);
}

static inline bool in_page(const void *p, const ng_mi_page *page)
{
    const uint8_t *b = p;
    const uint8_t *start = page->start;
    return b >= start && b < start + page->area;
}

/* Fills one page of `size` blocks; returns them (page->reserved of them) and the page. */
static inline void **fill_page(ng_mi_heap *h, size_t size, ng_mi_page **page_out, size_t *n_out)
{
    *page_out = NULL;
    *n_out = 0;
    void *first = ng_mi_heap_malloc(h, size);
    if (first == NULL)
        return NULL;
    ng_mi_page *page = alloc_page_of(first);
    /* Start from a fresh page: blocks of earlier tests may share this one. */
    size_t n = page->reserved;
    void **blocks = calloc(n, sizeof *blocks);
    if (blocks == NULL)
        return NULL;
    size_t got = 0;
    blocks[got++] = first;
    for (size_t i = 1; i < 4 * n && got < n; i++) {
        void *p = ng_mi_heap_malloc(h, size);
        if (alloc_page_of(p) == page)
            blocks[got++] = p;
        else
            ng_mi_free(p); /* another page: not part of the scene */
    }
    *page_out = page;
    *n_out = got;
    return blocks;
}

/* fill_page, then every block given `tag`'s pattern over its `size` bytes (the object headers
 * a lock-free reader may load). */
static inline void **fill_page_tagged(ng_mi_heap *h, size_t size, uint32_t tag,
                                      ng_mi_page **page_out, size_t *n_out)
{
    void **blocks = fill_page(h, size, page_out, n_out);
    for (size_t i = 0; blocks != NULL && i < *n_out; i++)
        alloc_fill(blocks[i], 0, size, tag);
    return blocks;
}

#endif /* NG_TEST_ALLOC_HELPERS_H */
