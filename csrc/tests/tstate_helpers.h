/* Helpers shared by the thread-state tests (test_tstate*.c, test_stw_gil.c,
 * test_delayed_free.c).
 *
 * A test body starts from a scene (TSTATE_SCENE: an interpreter and the calling thread's
 * attached state) and ends it with end_scene. The threads a test starts follow one shape: a
 * struct per thread with its `pthread_t thread`, an `int stop` flag it polls and the `int
 * result` it leaves behind; such threads begin with create_attached and end with
 * release_keeping_error, and the test ends them with STOP_AND_JOIN or JOIN_ALL. */
#ifndef NG_TEST_TSTATE_HELPERS_H
#define NG_TEST_TSTATE_HELPERS_H

#include "harness.h"
#include "tstate_internal.h"

/* Thread sanitizer runs the stress loops 5-10 times slower; its runs use smaller sizes. */
#if defined(__SANITIZE_THREAD__)
#define THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define THREAD_SANITIZER 1
#endif
#endif
#ifndef THREAD_SANITIZER
#define THREAD_SANITIZER 0
#endif

/* Either sanitizer (ASan keeps shadow memory for every block, TSan is slow); gcc defines the
 * __SANITIZE_ macros, clang answers __has_feature. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/* ---- The test body's scene ----------------------------------------------------------------- */

/* An interpreter, or NULL with the failure recorded. */
static inline ng_interp *new_interp(void)
{
    ng_interp *in = NULL;
    if (!CHECK_STATUS(ng_interp_new(&in), NG_OK))
        return NULL;
    return in;
}

/* A new (so detached) state for the calling thread; NULL (failure recorded) otherwise. */
static inline ng_tstate *detached_state(ng_interp *in)
{
    ng_tstate *ts = NULL;
    if (!CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK))
        return NULL;
    return ts;
}

/* A state for the calling thread, attached; NULL (failure recorded) otherwise. */
static inline ng_tstate *attached_state(ng_interp *in)
{
    ng_tstate *ts = detached_state(in);
    if (ts == NULL)
        return NULL;
    if (!CHECK_STATUS(ng_tstate_attach(ts), NG_OK)) {
        ng_tstate_release(ts);
        return NULL;
    }
    return ts;
}

/* Declares an interpreter under the given name; the test returns (failure recorded) when
 * there is none. A macro because only the test body itself can return from the test. */
#define INTERP_SCENE(in)                                                                \
    ng_interp *in = new_interp();                                                       \
    REQUIRE(in != NULL)

/* An interpreter and the calling thread's attached state in it, declared under the given
 * names (see INTERP_SCENE). */
#define TSTATE_SCENE(in, ts)                                                            \
    INTERP_SCENE(in);                                                                   \
    ng_tstate *ts = attached_state(in);                                                 \
    REQUIRE(ts != NULL)

/* The end of a scene: the state released, then the interpreter deleted. */
static inline void end_scene(ng_interp *in, ng_tstate *ts)
{
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ---- A test thread's own state ------------------------------------------------------------- */

/* A test thread's first steps: a state of its own, attached. The status of the first step that
 * failed; *ts is set as soon as the state exists, so the thread releases it whatever happened
 * (release_keeping_error). */
static inline int create_attached(ng_interp *in, ng_tstate **ts)
{
    int err = ng_tstate_new(in, ts);
    if (err == NG_OK)
        err = ng_tstate_attach(*ts);
    return err;
}

/* A helper thread's first step when a test thread waits for it on `ready`: a new attached
 * state of `in` in *ts. On failure the state, if any, is released, *ts is NULL, `flag` is set
 * in *failed (if failed is not NULL) and then 2 is published in *ready (release), so the
 * waiter sees the flag; the caller publishes 1 when the rest of its set-up is done. */
static inline bool attach_or_report(ng_interp *in, ng_tstate **ts, uint32_t *ready, int *failed,
                                    int flag)
{
    *ts = NULL;
    if (create_attached(in, ts) == NG_OK)
        return true;
    if (*ts != NULL)
        ng_tstate_release(*ts);
    *ts = NULL;
    if (failed != NULL)
        *failed |= flag;
    ng_atomic_store(ready, 2, NG_RELEASE);
    return false;
}

/* A test thread's last step: releases its state, if it got one. The thread's first error:
 * `err`, or else the release's status. */
static inline int release_keeping_error(ng_tstate *ts, int err)
{
    if (ts != NULL) {
        int rel = ng_tstate_release(ts);
        if (err == NG_OK)
            err = rel;
    }
    return err;
}

/* ---- Ending a test's threads ----------------------------------------------------------------
 * Macros because they serve every kind of thread struct (any with the fields named above); the
 * checks report the test's own line. */

/* Joins each of the n threads of the array w and checks that it ended with NG_OK. */
#define JOIN_ALL(w, n)                                                                  \
    do {                                                                                \
        for (int join_i_ = 0; join_i_ < (n); join_i_++) {                               \
            join_thread((w)[join_i_].thread);                                           \
            CHECK_STATUS((w)[join_i_].result, NG_OK);                                   \
        }                                                                               \
    } while (0)

/* Tells all n threads of the array w to stop, then joins them (JOIN_ALL). */
#define STOP_AND_JOIN(w, n)                                                             \
    do {                                                                                \
        for (int stop_i_ = 0; stop_i_ < (n); stop_i_++)                                 \
            ng_atomic_store(&(w)[stop_i_].stop, 1, NG_SEQ_CST);                         \
        JOIN_ALL(w, n);                                                                 \
    } while (0)

/* A delayed call that counts its runs in the int it is given. */
static inline void count_call(void *counter) { ng_atomic_fetch_add((int *)counter, 1, NG_SEQ_CST); }

/* ---- Observations ---------------------------------------------------------------------------- */

/* Another thread's attachment state (seq-cst: tests compare it with other observations). */
static inline uint32_t state_of(ng_tstate *ts) { return ng_atomic_load(&ts->state, NG_SEQ_CST); }

static inline ng_interp_stats stats_of(ng_interp *in)
{
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    return st;
}

/* Waits (PATIENCE_MS at most) until a counter another thread increments is above `value`; the
 * value is whether it got there. */
static inline bool wait_past(uint64_t *counter, uint64_t value)
{
    return WAIT_UNTIL(ng_atomic_load(counter, NG_SEQ_CST) > value, PATIENCE_MS);
}

/* Waits (PATIENCE_MS at most) until the thread published its state; the value is whether it
 * did. */
static inline bool wait_published(ng_tstate **slot)
{
    return WAIT_UNTIL(ng_atomic_load(slot, NG_SEQ_CST) != NULL, PATIENCE_MS);
}

#endif /* NG_TEST_TSTATE_HELPERS_H */
