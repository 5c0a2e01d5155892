/* Helpers shared by the page allocator tests (test_alloc*.c). */
#ifndef NG_TEST_ALLOC_HELPERS_H
#define NG_TEST_ALLOC_HELPERS_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "alloc_internal.h"

/* Thread sanitizer runs these loops 5-10 times slower; its runs use smaller sizes. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define ALLOC_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define ALLOC_SANITIZED 1
#endif
#endif
#ifndef ALLOC_SANITIZED
#define ALLOC_SANITIZED 0
#endif
/* n in the optimised build, n / 4 (at least 1) under the sanitizers. */
#define ALLOC_SCALED(n) (ALLOC_SANITIZED ? ((n) / 4 > 0 ? (n) / 4 : 1) : (n))

static inline ng_interp *alloc_interp_new(void)
{
    ng_interp *in = NULL;
    if (!CHECK_STATUS(ng_interp_new(&in), NG_OK))
        return NULL;
    return in;
}

/* A state for the calling thread, attached; NULL (failure recorded) otherwise. */
static inline ng_tstate *alloc_state_attached(ng_interp *in)
{
    ng_tstate *ts = NULL;
    if (!CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK))
        return NULL;
    if (!CHECK_STATUS(ng_tstate_attach(ts), NG_OK)) {
        ng_tstate_release(ts);
        return NULL;
    }
    return ts;
}

static inline ng_mi_heap *alloc_heap(ng_tstate *ts, ng_mi_heap_kind kind)
{
    ng_mi_heap *h = NULL;
    if (!CHECK_STATUS(ng_mi_heap_of(ts, kind, &h), NG_OK))
        return NULL;
    return h;
}

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

#endif /* NG_TEST_ALLOC_HELPERS_H */
