/* Helpers shared by the thread-state tests (test_tstate*.c, test_stw_gil.c). */
#ifndef NG_TEST_TSTATE_HELPERS_H
#define NG_TEST_TSTATE_HELPERS_H

#include "harness.h"
#include "tstate_internal.h"

/* An interpreter, or NULL with the failure recorded. */
static inline ng_interp *new_interp(void)
{
    ng_interp *in = NULL;
    if (!CHECK_STATUS(ng_interp_new(&in), NG_OK))
        return NULL;
    return in;
}

/* Another thread's attachment state (seq-cst: tests compare it with other observations). */
static inline uint32_t state_of(ng_tstate *ts) { return ng_atomic_load(&ts->state, NG_SEQ_CST); }

static inline ng_interp_stats stats_of(ng_interp *in)
{
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    return st;
}

#endif /* NG_TEST_TSTATE_HELPERS_H */
