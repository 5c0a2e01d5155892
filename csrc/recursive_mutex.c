/* ng_recursive_mutex (fields in nogil/recursive_mutex.h). */
#include "internal.h"

int ng_recursive_mutex_lock_timed(ng_recursive_mutex *m, int64_t timeout_ns, int flags)
{
    if (m == NULL)
        return NG_EINVAL;
    uint64_t me = ng_thread_id();
    /* Relaxed: only we ever store our own id, so reading it back means we own the lock;
     * any other value (stale or not) means we do not. */
    if (ng_atomic_load(&m->thread, NG_RELAXED) == me) {
        m->level++;
        return NG_OK;
    }
    int r = ng_mutex_lock_timed(&m->mutex, timeout_ns, flags);
    if (r != NG_OK)
        return r;
    ng_atomic_store(&m->thread, me, NG_RELAXED);
    return NG_OK;
}

int ng_recursive_mutex_lock(ng_recursive_mutex *m)
{
    return ng_recursive_mutex_lock_timed(m, -1, NG_WAIT_DETACH);
}

int ng_recursive_mutex_unlock(ng_recursive_mutex *m)
{
    if (m == NULL)
        return NG_EINVAL;
    if (ng_atomic_load(&m->thread, NG_RELAXED) != ng_thread_id())
        return NG_ENOTOWNER;
    if (m->level > 0) {
        m->level--;
        return NG_OK;
    }
    /* Relaxed: the mutex unlock below is the release that publishes this store. */
    ng_atomic_store(&m->thread, 0, NG_RELAXED);
    return ng_mutex_unlock(&m->mutex);
}

bool ng_recursive_mutex_is_owned(const ng_recursive_mutex *m)
{
    return m != NULL && ng_atomic_load(&m->thread, NG_RELAXED) == ng_thread_id();
}

void ng_recursive_mutex_at_fork_reinit(ng_recursive_mutex *m)
{
    if (m == NULL)
        return;
    if (ng_atomic_load(&m->thread, NG_RELAXED) == ng_thread_id()) {
        /* Held by the thread that survived the fork: it stays held, minus dead waiters. */
        ng_atomic_store(&m->mutex.bits, NG_LOCKED, NG_RELAXED);
        return;
    }
    ng_atomic_store(&m->thread, 0, NG_RELAXED);
    m->level = 0;
    ng_mutex_at_fork_reinit(&m->mutex);
}
