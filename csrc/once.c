/* ng_once (states in nogil/once.h). */
#include "internal.h"

int ng_once_begin(ng_once *o)
{
    if (o == NULL)
        return NG_EINVAL;
    /* Acquire on every load that can observe DONE: the initialiser's writes must be visible
     * to a caller that returns "done". */
    uint8_t v = ng_atomic_load(&o->v, NG_ACQUIRE);
    for (;;) {
        if (v == NG_ONCE_DONE)
            return 0;
        if (v == NG_UNLOCKED) {
            if (ng_atomic_cas(&o->v, &v, NG_LOCKED, NG_ACQUIRE, NG_ACQUIRE))
                return 1;
            continue;
        }
        /* Another thread is running the initialiser: sleep until it publishes. */
        if ((v & NG_HAS_PARKED) == 0) {
            if (!ng_atomic_cas(&o->v, &v, (uint8_t)(v | NG_HAS_PARKED), NG_ACQUIRE, NG_ACQUIRE))
                continue;
            v |= NG_HAS_PARKED;
        }
        if (ng_park(&o->v, &v, 1, -1, NULL, NG_WAIT_DETACH) == NG_CANCELLED)
            return NG_CANCELLED;
        v = ng_atomic_load(&o->v, NG_ACQUIRE);
    }
}

int ng_once_end(ng_once *o, int success)
{
    if (o == NULL)
        return NG_EINVAL;
    uint8_t v = ng_atomic_load(&o->v, NG_RELAXED);
    do {
        if ((v & NG_LOCKED) == 0)
            return NG_ENOTLOCKED;
        /* Release: the initialiser's writes happen-before any caller that sees DONE. */
    } while (!ng_atomic_cas(&o->v, &v, success ? NG_ONCE_DONE : NG_UNLOCKED, NG_RELEASE,
                            NG_RELAXED));
    if (v & NG_HAS_PARKED)
        ng_unpark_all(&o->v);
    return NG_OK;
}

int ng_once_call(ng_once *o, ng_once_fn *fn, void *arg)
{
    if (o == NULL || fn == NULL)
        return NG_EINVAL;
    if (ng_once_is_done(o))
        return 0;
    int r = ng_once_begin(o);
    if (r <= 0)
        return r;
    int result = fn(arg);
    ng_once_end(o, result == 0);
    return result;
}

int ng_once_after_fork(ng_once *o)
{
    if (o && (ng_atomic_load(&o->v, NG_RELAXED) & NG_LOCKED)) {
        ng_atomic_store(&o->v, NG_UNLOCKED, NG_RELAXED);
        return 1;
    }
    return 0;
}
