/* Private hooks of the QSBR layer (qsbr.c) for the core's tests. Not part of the public API. */
#ifndef NOGIL_QSBR_INTERNAL_H
#define NOGIL_QSBR_INTERNAL_H

#include "nogil.h"

/* Test-only fault injection: while positive, each segment allocation decrements it and fails
 * (ng_qsbr_reserve then returns NG_ENOMEM). Set it only while no other thread reserves. */
extern int ng_test_fail_qsbr_segment_alloc;

/* Test-only hook: called by ng_qsbr_reserve after it chose the slot and released the mutex,
 * before it returns the slot (spec R10: the window in which CPython recomputed the index from
 * an array that another thread's growth might have moved). NULL by default. */
extern void (*ng_test_qsbr_reserve_hook)(ng_qsbr_slot *slot);

/* Test-only: when positive, ng_qsbr_wait sleeps this long at most between polls instead of
 * 1 ms, so a test can tell a wake-up from the periodic re-poll. */
extern int64_t ng_test_qsbr_wait_slice_ns;

/* Test-only hook: called by a poll that found `laggard` behind at `seq` for the first time,
 * before it records the sighting (the window in which another poller may record and report
 * the same stall). NULL by default. */
extern void (*ng_test_qsbr_stall_sighting_hook)(ng_qsbr_slot *laggard, uint64_t seq);

#endif /* NOGIL_QSBR_INTERNAL_H */
