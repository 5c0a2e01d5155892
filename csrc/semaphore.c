/* Futex semaphore for one waiter. See nogil/semaphore.h for the encoding of `value`. */
#include "internal.h"

#define ASLEEP (-1)

int ng_semaphore_post(ng_semaphore *s)
{
    if (s == NULL)
        return NG_EINVAL;
    int32_t v = ng_atomic_load(&s->value, NG_RELAXED);
    int32_t next;
    do {
        next = v == ASLEEP ? 1 : v + 1;
        /* Release: what the poster did before posting (an unparker's hand-off, a canceller's
         * flag) is visible to the waiter whose acquiring CAS consumes this post. */
    } while (!ng_atomic_cas(&s->value, &v, next, NG_RELEASE, NG_RELAXED));
    if (v == ASLEEP)
        ng_futex_wake((uint32_t *)&s->value, 1);
    return NG_OK;
}

int ng_semaphore_wait_until(ng_semaphore *s, int64_t deadline_ns, int flags)
{
    if (s == NULL || (flags & ~NG_WAIT_FLAGS_ALL))
        return NG_EINVAL;
    int32_t v = ng_atomic_load(&s->value, NG_RELAXED);
    for (;;) {
        if (v > 0) {
            if (ng_atomic_cas(&s->value, &v, v - 1, NG_ACQUIRE, NG_RELAXED))
                return NG_OK;
            continue;
        }
        if (v == 0) {
            if (ng_deadline_remaining(deadline_ns) == 0)
                return NG_TIMEOUT;
            /* Relaxed: announcing that we sleep orders nothing; the post's release does. */
            if (!ng_atomic_cas(&s->value, &v, ASLEEP, NG_RELAXED, NG_RELAXED))
                continue;
        }
        int err = ng_futex_wait_until((uint32_t *)&s->value, (uint32_t)ASLEEP, deadline_ns);
        if (err == ETIMEDOUT || (err == EINTR && (flags & NG_WAIT_INTERRUPTIBLE))) {
            int32_t expected = ASLEEP;
            if (ng_atomic_cas(&s->value, &expected, 0, NG_RELAXED, NG_RELAXED))
                return err == ETIMEDOUT ? NG_TIMEOUT : NG_INTR;
            v = expected; /* a post arrived as we gave up: take it */
            continue;
        }
        v = ng_atomic_load(&s->value, NG_RELAXED);
    }
}

int ng_semaphore_wait(ng_semaphore *s, int64_t timeout_ns, int flags)
{
    return ng_semaphore_wait_until(s, ng_deadline_after(timeout_ns), flags);
}
