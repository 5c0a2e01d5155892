/* Never-reused thread ids: a process-wide counter, one value per thread on first use. */
#include "internal.h"

static uint64_t last_thread_id;
NG_THREAD_LOCAL uint64_t ng_thread_id_cached;

uint64_t ng_thread_id_assign(void)
{
    if (ng_thread_id_cached == 0) {
        /* Relaxed: only uniqueness matters, and fetch_add is atomic under any order. */
        ng_thread_id_cached = ng_atomic_fetch_add(&last_thread_id, 1, NG_RELAXED) + 1;
    }
    return ng_thread_id_cached;
}
