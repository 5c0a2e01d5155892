/* The GIL, switchable at run time (spec 5.8; CPython's ceval_gil.c in a free-threaded build).
 *
 * gil.enabled counts "needs the GIL" requests (INT32_MAX: permanent). The GIL itself is an
 * ng_mutex taken by attach and released by detach; holds_gil (its own word, R4) says whether
 * this state really took it, because the GIL may be switched on between an attach's no-op
 * take and its state CAS (the attach then retries, tstate.c). The count changes only under a
 * stop-the-world (0 -> n) or by the GIL holder (n -> n +/- 1), so its loads can be relaxed:
 * the stop-the-world restart or the GIL mutex orders them.
 *
 * Waiting for the GIL never detaches (the waiter is in the middle of attaching: there is
 * nothing to detach) and cannot be cancelled. A waiter that has waited longer than
 * gil.interval_ns asks the holder to yield (NG_PENDING_GIL_DROP, honoured at its next
 * checkpoint); the mutex's hand-off then gives the GIL to the longest waiter.
 *
 * Thread exit: the release detaches, which drops the GIL, before leaving QSBR (R1). fork():
 * the child keeps the GIL only if the forking thread's attached state held it
 * (ng_gil_after_fork_child); the waiters are gone with their threads.
 */
#include "tstate_internal.h"

bool ng_gil_take(ng_tstate *ts)
{
    ng_gil *gil = &ts->interp->gil;
    if (ng_atomic_load(&gil->enabled, NG_RELAXED) == 0)
        return false;
    if (!ng_mutex_trylock(&gil->lock)) {
        ng_cancel *token = ng_cancel_install(NULL);
        int64_t interval = ng_atomic_load(&gil->interval_ns, NG_RELAXED);
        while (ng_mutex_lock_timed(&gil->lock, interval, NG_WAIT_DEFAULT) != NG_OK) {
            /* Switched off while we waited: attach without it. */
            if (ng_atomic_load(&gil->enabled, NG_RELAXED) == 0) {
                ng_cancel_install(token);
                return false;
            }
            /* Relaxed: a hint. A stale holder only gets a spurious yield (its memory stays
             * valid: released states are quarantined, never freed). */
            ng_tstate *holder = ng_atomic_load(&gil->holder, NG_RELAXED);
            if (holder != NULL)
                ng_tstate_set_pending(holder, NG_PENDING_GIL_DROP);
        }
        ng_cancel_install(token);
    }
    /* The disabler stores 0 before it unlocks, so our acquire sees it. */
    if (ng_atomic_load(&gil->enabled, NG_RELAXED) == 0) {
        ng_mutex_unlock(&gil->lock);
        return false;
    }
    /* Relaxed: holder is a hint for waiters, switches a statistic, holds_gil is read by
     * others only for diagnostics (the owner reads its own writes). */
    if (ng_atomic_load(&gil->holder, NG_RELAXED) != ts) {
        ng_atomic_store(&gil->holder, ts, NG_RELAXED);
        ng_atomic_fetch_add(&gil->switches, 1, NG_RELAXED);
    }
    ng_atomic_store(&ts->holds_gil, 1, NG_RELAXED);
    return true;
}

void ng_gil_drop(ng_tstate *ts)
{
    ng_atomic_store(&ts->holds_gil, 0, NG_RELAXED);
    ng_mutex_unlock(&ts->interp->gil.lock);
}

void ng_gil_forget_holder(ng_tstate *ts)
{
    ng_tstate *expected = ts;
    /* Relaxed: holder is only a hint (see ng_gil_take). */
    ng_atomic_cas(&ts->interp->gil.holder, &expected, NULL, NG_RELAXED, NG_RELAXED);
}

/* Counts one request (or makes the GIL permanent). The first request stops the world so that
 * no thread is attached without the GIL once it is on. */
static int gil_enable(ng_tstate *ts, bool permanent)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    if (ng_tstate_current() != ts)
        return NG_ESTATE;
    ng_interp *interp = ts->interp;
    ng_gil *gil = &interp->gil;
    int32_t enabled = ng_atomic_load(&gil->enabled, NG_RELAXED);
    if (enabled == INT32_MAX)
        return NG_OK;
    if (enabled > 0) {
        /* Attached while it is on: we hold it, and only the holder changes the count. */
        if (!permanent && enabled >= INT32_MAX - 1)
            return NG_EBUSY;
        ng_atomic_store(&gil->enabled, permanent ? INT32_MAX : enabled + 1, NG_RELAXED);
        return NG_OK;
    }
    ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    /* A caller that stopped the world itself already has every other thread suspended. */
    bool stop_here = !ng_stw_stopped_by_me(interp);
    if (stop_here)
        ng_stw_stop(interp, ts);
    enabled = ng_atomic_load(&gil->enabled, NG_RELAXED);
    if (permanent || enabled == INT32_MAX)
        enabled = INT32_MAX;
    else if (enabled < INT32_MAX - 1)
        enabled++; /* 1 unless another thread enabled it while we waited for the stop */
    ng_atomic_store(&gil->enabled, enabled, NG_RELAXED);
    if (stop_here)
        ng_stw_start(interp);
    /* Takes the GIL now. */
    return ng_tstate_attach_unchecked(ts);
}

int ng_gil_enable(ng_tstate *ts) { return gil_enable(ts, false); }

int ng_gil_enable_permanent(ng_tstate *ts) { return gil_enable(ts, true); }

int ng_gil_disable(ng_tstate *ts)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    if (ng_tstate_current() != ts || !ng_atomic_load(&ts->holds_gil, NG_RELAXED))
        return NG_ESTATE;
    ng_gil *gil = &ts->interp->gil;
    int32_t enabled = ng_atomic_load(&gil->enabled, NG_RELAXED);
    if (enabled == INT32_MAX)
        return NG_ESTATE; /* permanent */
    ng_atomic_store(&gil->enabled, enabled - 1, NG_RELAXED);
    if (enabled == 1) {
        /* Off: release it (waiters see 0 after acquiring and carry on without it) and forget
         * the yield requests made while it was on. */
        ng_tstate_clear_pending(ts, NG_PENDING_GIL_DROP);
        ng_gil_drop(ts);
    }
    return NG_OK;
}

void ng_gil_after_fork_child(ng_interp *interp, ng_tstate *survivor)
{
    ng_gil *gil = &interp->gil;
    ng_mutex_at_fork_reinit(&gil->lock);
    if (survivor != NULL && survivor->holds_gil) {
        (void)ng_mutex_trylock(&gil->lock);
        gil->holder = survivor;
    }
    else {
        gil->holder = NULL;
    }
}
