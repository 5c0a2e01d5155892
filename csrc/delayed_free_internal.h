/* Private hooks of delayed_free.c for the tests; not part of the public API. */
#ifndef NOGIL_DELAYED_FREE_INTERNAL_H
#define NOGIL_DELAYED_FREE_INTERNAL_H

#include "nogil.h"

/* Test-only fault injection: while positive, each allocation of a delayed-free chunk (or
 * reuse of the queue's spare chunk) decrements it and fails, so the caller takes the
 * out-of-memory path (a stop-the-world grace period, then the entry runs at once). Read and
 * written with atomics. */
extern int ng_test_fail_delayed_chunk_alloc;

#endif /* NOGIL_DELAYED_FREE_INTERNAL_H */
