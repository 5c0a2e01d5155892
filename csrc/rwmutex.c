/* ng_rwmutex (bits in nogil/rwmutex.h). */
#include "internal.h"

#define ONE_READER ((uintptr_t)1 << NG_RWMUTEX_READER_SHIFT)

static uintptr_t readers(uintptr_t bits)
{
    return bits >> NG_RWMUTEX_READER_SHIFT;
}

/* Sets the parked bit and sleeps until the word changes; *bits gets a fresh value. Returns
 * NG_CANCELLED if the calling thread's cancellation token fired, else NG_OK. */
static int wait_for_change(ng_rwmutex *rw, uintptr_t *bits)
{
    uintptr_t b = *bits;
    if ((b & NG_RWMUTEX_PARKED) == 0) {
        if (!ng_atomic_cas(&rw->bits, &b, b | NG_RWMUTEX_PARKED, NG_RELAXED, NG_RELAXED)) {
            *bits = b;
            return NG_OK;
        }
        b |= NG_RWMUTEX_PARKED;
    }
    int r = ng_park(&rw->bits, &b, sizeof b, -1, NULL, NG_WAIT_DETACH);
    *bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    return r == NG_CANCELLED ? NG_CANCELLED : NG_OK;
}

int ng_rwmutex_rlock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return NG_EINVAL;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    for (;;) {
        /* A parked bit may mean a waiting writer: new readers queue behind it. */
        if (bits & (NG_WRITE_LOCKED | NG_RWMUTEX_PARKED)) {
            if (wait_for_change(rw, &bits) == NG_CANCELLED)
                return NG_CANCELLED;
        }
        else if (ng_atomic_cas(&rw->bits, &bits, bits + ONE_READER, NG_ACQUIRE, NG_RELAXED))
            return NG_OK;
    }
}

bool ng_rwmutex_tryrlock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return false;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    while ((bits & (NG_WRITE_LOCKED | NG_RWMUTEX_PARKED)) == 0) {
        if (ng_atomic_cas(&rw->bits, &bits, bits + ONE_READER, NG_ACQUIRE, NG_RELAXED))
            return true;
    }
    return false;
}

int ng_rwmutex_runlock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return NG_EINVAL;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    do {
        if (readers(bits) == 0)
            return NG_ENOTLOCKED;
        /* Release: the reader's loads are ordered before a writer's later stores. */
    } while (!ng_atomic_cas(&rw->bits, &bits, bits - ONE_READER, NG_RELEASE, NG_RELAXED));
    bits -= ONE_READER;
    /* The last reader out wakes the parked (writer-first in spirit: everyone races again;
     * the parked bit stays set until the next writer unlock clears it). */
    if (readers(bits) == 0 && (bits & NG_RWMUTEX_PARKED))
        ng_unpark_all(&rw->bits);
    return NG_OK;
}

int ng_rwmutex_lock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return NG_EINVAL;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    for (;;) {
        if ((bits & ~NG_RWMUTEX_PARKED) == 0) {
            if (ng_atomic_cas(&rw->bits, &bits, bits | NG_WRITE_LOCKED, NG_ACQUIRE, NG_RELAXED))
                return NG_OK;
        }
        else if (wait_for_change(rw, &bits) == NG_CANCELLED) {
            return NG_CANCELLED;
        }
    }
}

bool ng_rwmutex_trylock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return false;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    while ((bits & ~NG_RWMUTEX_PARKED) == 0) {
        if (ng_atomic_cas(&rw->bits, &bits, bits | NG_WRITE_LOCKED, NG_ACQUIRE, NG_RELAXED))
            return true;
    }
    return false;
}

int ng_rwmutex_unlock(ng_rwmutex *rw)
{
    if (rw == NULL)
        return NG_EINVAL;
    uintptr_t bits = ng_atomic_load(&rw->bits, NG_RELAXED);
    do {
        if ((bits & NG_WRITE_LOCKED) == 0)
            return NG_ENOTLOCKED;
        /* Release: the writer's stores are visible to the next reader or writer. */
    } while (!ng_atomic_cas(&rw->bits, &bits, 0, NG_RELEASE, NG_RELAXED));
    if (bits & NG_RWMUTEX_PARKED)
        ng_unpark_all(&rw->bits);
    return NG_OK;
}

void ng_rwmutex_at_fork_reinit(ng_rwmutex *rw)
{
    if (rw)
        ng_atomic_store(&rw->bits, 0, NG_RELAXED);
}
