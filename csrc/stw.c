/* Stop-the-world, per interpreter (CPython's _PyEval_StopTheWorld / _PyEval_StartTheWorld).
 *
 * stw.mutex serialises attempts and stays held while the world is stopped; requested,
 * countdown and requester are under head_lock. A stop counts every other state of the
 * interpreter, moves the DETACHED ones to SUSPENDED itself (CAS) and asks the ATTACHED ones
 * to suspend at their next checkpoint (NG_PENDING_STOP); each one that suspends, or leaves
 * the list unsuspended, decrements the countdown, and the last one sets stop_event. The
 * requester re-scans every millisecond and waits WITHOUT detaching (R8: a requester that
 * detached could have to re-acquire, on re-attach, something handed to a suspended thread).
 * Nothing here locks a mutex that user code can hold (R9). The restart moves every SUSPENDED
 * state back to DETACHED and wakes the threads parked on their state words.
 *
 * Thread exit: a state that leaves the list while a stop is in progress keeps the countdown
 * right (ng_tstate_unlink_locked). fork(): the prepare handler stops every world with
 * ng_stw_try_stop (it backs off rather than wait for a world another thread holds stopped,
 * see fork.c's lock order) and the child resets this bookkeeping (ng_stw_after_fork_child),
 * since only the forking thread survives.
 */
#include "tstate_internal.h"

/* How often the requester re-scans: it catches threads that detached on their own. */
#define STW_POLL_NS NG_NS_PER_MS

bool ng_stw_stopped_by_me(ng_interp *interp)
{
    /* Relaxed: only the calling thread writes its own id here, and it reads its own write. */
    return ng_atomic_load(&NG_INTERP_IMPL(interp)->stw_owner, NG_RELAXED) == ng_thread_id();
}

/* One pass over the list under head_lock: suspends the detached states, asks the attached
 * ones to stop. Returns whether every counted state is suspended. */
static bool suspend_others_locked(ng_interp *interp)
{
    ng_stw *stw = &interp->stw;
    for (ng_tstate *ts = interp->threads; ts != NULL; ts = ts->next) {
        if (ts == stw->requester)
            continue;
        uint32_t seen = NG_TSTATE_DETACHED;
        /* Acq-rel: acquire pairs with the owner's release store of DETACHED (its work while
         * attached is done); release orders our earlier writes before its re-attach. */
        if (ng_atomic_cas(&ts->state, &seen, NG_TSTATE_SUSPENDED, NG_ACQ_REL, NG_RELAXED))
            stw->countdown--;
        else if (seen == NG_TSTATE_ATTACHED)
            ng_tstate_set_pending(ts, NG_PENDING_STOP);
    }
    return stw->countdown == 0;
}

/* The stop itself, with stw.mutex held by the caller. */
static void stop_locked(ng_interp *interp, ng_tstate *requester)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    ng_stw *stw = &interp->stw;
    ng_atomic_store(&impl->stw_owner, ng_thread_id(), NG_RELAXED);

    ng_lock_nodetach(&interp->head_lock);
    stw->requested = 1;
    stw->requester = requester;
    /* Relaxed: nobody waits on the event between two stops (only the requester does, and it
     * holds stw.mutex); head_lock orders the reset before any notify. */
    ng_atomic_store(&stw->stop_event.v, 0, NG_RELAXED);
    stw->countdown = 0;
    for (ng_tstate *ts = interp->threads; ts != NULL; ts = ts->next)
        if (ts != requester)
            stw->countdown++;
    for (;;) {
        bool stopped = suspend_others_locked(interp);
        ng_mutex_unlock(&interp->head_lock);
        if (stopped)
            break;
        NG_TSTATE_TORTURE_YIELD();
        /* R8: no NG_WAIT_DETACH. The event is set by the last thread to suspend. */
        if (ng_event_wait_timed(&stw->stop_event, STW_POLL_NS, NG_WAIT_DEFAULT) == NG_OK)
            break;
        ng_lock_nodetach(&interp->head_lock);
    }
    /* Relaxed: a hint for ng_world_stopped(); the states themselves carry the ordering. */
    ng_atomic_store(&stw->world_stopped, 1, NG_RELAXED);
}

int ng_stw_stop(ng_interp *interp, ng_tstate *requester)
{
    if (ng_stw_stopped_by_me(interp))
        return NG_EBUSY;
    /* The only wait that detaches: while another stop-the-world is in progress, this thread
     * must be suspendable by it. Not cancellable: a stop does not give up. */
    ng_lock_detach(&interp->stw.mutex);
    stop_locked(interp, requester);
    return NG_OK;
}

int ng_stw_try_stop(ng_interp *interp, ng_tstate *requester)
{
    if (ng_stw_stopped_by_me(interp))
        return NG_EBUSY;
    /* Another thread stops this world, or holds it stopped: its holder may be about to take
     * a lock our caller holds (the fork handler's), so do not wait for it here. */
    if (!ng_mutex_trylock(&interp->stw.mutex))
        return NG_TIMEOUT;
    stop_locked(interp, requester);
    return NG_OK;
}

void ng_stw_stop_borrowed(ng_interp *interp, ng_tstate *requester)
{
    /* stw.mutex is held by a thread that this stop's caller keeps suspended in another
     * world: it serialises this stop with that thread's as well as if we held it. */
    stop_locked(interp, requester);
}

/* The restart; `unlock` unless stw.mutex belongs to a suspended thread (ng_stw_stop_borrowed). */
static int start(ng_interp *interp, bool unlock)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    ng_stw *stw = &interp->stw;
    ng_lock_nodetach(&interp->head_lock);
    if (!stw->requested || !ng_atomic_load(&stw->world_stopped, NG_RELAXED)) {
        ng_mutex_unlock(&interp->head_lock);
        return NG_EINVAL;
    }
    stw->requested = 0;
    ng_atomic_store(&stw->world_stopped, 0, NG_RELAXED);
    for (ng_tstate *ts = interp->threads; ts != NULL; ts = ts->next) {
        if (ts == stw->requester || ng_atomic_load(&ts->state, NG_RELAXED) != NG_TSTATE_SUSPENDED)
            continue;
        /* Release: what the requester did while the world was stopped happens-before the
         * thread's acquire CAS when it attaches. */
        ng_atomic_store(&ts->state, NG_TSTATE_DETACHED, NG_RELEASE);
        ng_unpark_all(&ts->state);
    }
    stw->requester = NULL;
    /* Relaxed: statistics. */
    ng_atomic_fetch_add(&interp->stops, 1, NG_RELAXED);
    ng_mutex_unlock(&interp->head_lock);
    ng_atomic_store(&impl->stw_owner, 0, NG_RELAXED);
    if (unlock)
        ng_mutex_unlock(&stw->mutex);
    return NG_OK;
}

int ng_stw_start(ng_interp *interp) { return start(interp, true); }

void ng_stw_start_borrowed(ng_interp *interp) { (void)start(interp, false); }

int ng_stop_the_world(ng_interp *interp, ng_tstate *ts)
{
    int err = ng_interp_check_live(interp);
    if (err != NG_OK)
        return err;
    if (ts != NULL) {
        err = ng_tstate_check_owner(ts);
        if (err != NG_OK)
            return err;
        if (ts->interp != interp)
            return NG_EINVAL;
    }
    /* The caller's attached state in this interpreter would never reach a checkpoint while
     * we wait: it must be the requester. */
    ng_tstate *current = ng_tstate_current();
    if (current != NULL && current->interp == interp && current != ts)
        return NG_EINVAL;
    return ng_stw_stop(interp, ts);
}

int ng_start_the_world(ng_interp *interp)
{
    int err = ng_interp_check_live(interp);
    if (err != NG_OK)
        return err;
    return ng_stw_start(interp);
}

int ng_stw_suspend_self(ng_tstate *ts)
{
    ng_interp *interp = ts->interp;
    ng_stw *stw = &interp->stw;
    ng_lock_nodetach(&interp->head_lock);
    /* A stale request (the stop it belonged to is over, or we are its requester, or we left
     * the list) is ignored. Checked under head_lock, where the requester counted us. */
    if (!stw->requested || stw->requester == ts || !NG_TSTATE_IMPL(ts)->linked) {
        ng_mutex_unlock(&interp->head_lock);
        return NG_OK;
    }
    ng_tstate_detach_to(ts, NG_TSTATE_SUSPENDED);
    if (--stw->countdown == 0)
        ng_event_notify(&stw->stop_event);
    ng_mutex_unlock(&interp->head_lock);
    /* Waits for the restart (or reports the interpreter's deletion). */
    return ng_tstate_attach_unchecked(ts);
}

void ng_stw_after_fork_child(ng_interp *interp)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    ng_stw *stw = &interp->stw;
    ng_event_at_fork_reinit(&stw->stop_event);
    impl->fork_borrowed = 0; /* their holders are gone; the mutexes are re-initialised */
    if (!impl->fork_stopped && ng_stw_stopped_by_me(interp)) {
        /* The forking thread had stopped this world itself and will restart it: keep it
         * stopped, with only our own (uncounted) states left. */
        ng_mutex_at_fork_reinit(&stw->mutex);
        (void)ng_mutex_trylock(&stw->mutex);
        stw->countdown = 0;
        return;
    }
    ng_mutex_at_fork_reinit(&stw->mutex);
    stw->requested = 0;
    stw->world_stopped = 0;
    stw->countdown = 0;
    stw->requester = NULL;
    impl->stw_owner = 0;
    impl->fork_stopped = 0;
}
