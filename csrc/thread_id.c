/* Never-reused thread ids: a process-wide counter, one value per thread on first use. */
#include "internal.h"

static uint64_t last_thread_id;
static __thread uint64_t this_thread_id;

uint64_t ng_thread_id(void)
{
    if (this_thread_id == 0) {
        /* Relaxed: only uniqueness matters, and fetch_add is atomic under any order. */
        this_thread_id = ng_atomic_fetch_add(&last_thread_id, 1, NG_RELAXED) + 1;
    }
    return this_thread_id;
}
