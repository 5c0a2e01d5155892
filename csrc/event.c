/* ng_event (states in nogil/event.h). */
#include "internal.h"

int ng_event_notify(ng_event *e)
{
    if (e == NULL)
        return NG_EINVAL;
    /* Release: the notifier's writes are visible to a waiter that sees "set". */
    uint8_t old = ng_atomic_exchange(&e->v, NG_LOCKED, NG_RELEASE);
    if (old == NG_HAS_PARKED)
        ng_unpark_all(&e->v);
    return NG_OK;
}

bool ng_event_is_set(const ng_event *e)
{
    return e != NULL && ng_atomic_load(&e->v, NG_ACQUIRE) == NG_LOCKED;
}

int ng_event_wait_timed(ng_event *e, int64_t timeout_ns, int flags)
{
    if (e == NULL || (flags & ~NG_WAIT_FLAGS_ALL))
        return NG_EINVAL;
    int64_t deadline = ng_deadline_after(timeout_ns);
    for (;;) {
        uint8_t v = ng_atomic_load(&e->v, NG_ACQUIRE);
        if (v == NG_LOCKED)
            return NG_OK;
        int64_t remaining = timeout_ns < 0 ? -1 : ng_deadline_remaining(deadline);
        if (remaining == 0)
            return NG_TIMEOUT;
        if (v == NG_UNLOCKED &&
            !ng_atomic_cas(&e->v, &v, NG_HAS_PARKED, NG_RELAXED, NG_RELAXED))
            continue;
        uint8_t expected = NG_HAS_PARKED;
        int r = ng_park(&e->v, &expected, 1, remaining, NULL, flags);
        if (r == NG_CANCELLED || (r == NG_INTR && (flags & NG_WAIT_INTERRUPTIBLE)))
            return ng_event_is_set(e) ? NG_OK : r;
        /* Woken, value changed, spurious or timed out: the loop re-checks. */
    }
}

int ng_event_wait(ng_event *e)
{
    return ng_event_wait_timed(e, -1, NG_WAIT_DETACH);
}

void ng_event_at_fork_reinit(ng_event *e)
{
    if (e && ng_atomic_load(&e->v, NG_RELAXED) == NG_HAS_PARKED)
        ng_atomic_store(&e->v, NG_UNLOCKED, NG_RELAXED);
}
