/* Interpreters: creation, deletion, statistics, and the fork() handlers of the thread-state
 * layer.
 *
 * An interpreter is reference counted: its creator holds one reference (dropped by
 * ng_interp_delete) and every thread state whose memory is not yet quarantined holds one. A
 * state can outlive the deletion (its thread was blocked in the library and only later calls
 * ng_tstate_release); that release still locks head_lock and unregisters its QSBR slot, so
 * the memory must stay until the last state is gone. The last reference runs whatever delayed
 * work arrived late, then drops its reference to the memory. The memory has references of its
 * own for the QSBR slots pinned for the Go wrapper (ng_tstate_pin_slot), whose inlined report
 * reads the write sequence and the slot's seq without checking anything else; the last one
 * frees the QSBR segments and quarantines the memory (dead magic, FIFO pool) so a stale
 * interpreter pointer reads NG_ERELEASED.
 *
 * Deletion stops the world, takes every remaining state out of the list and moves it to
 * SHUTTING_DOWN (waking threads parked in attach, which then get NG_CANCELLED), restarts the
 * world (nothing in the list is left to resume), abandons those states' queues and runs the
 * interpreter's queue unconditionally, then drops the list's references.
 *
 * Thread exit: nothing here belongs to a thread. fork(): every live interpreter is on a
 * process-wide list. Before the fork, the prepare handler takes, in the order fork.c
 * documents: the list's mutex, every interpreter's world (stopped, with the forking thread's
 * attached state as requester) and every QSBR mutex, all three with try-locks, backing off
 * detached when one fails (a stw.mutex or QSBR mutex held unused, or a world held stopped, by
 * a thread that our stops keep suspended counts as taken); then every delayed-queue mutex and
 * head_lock (never held across a wait); the quarantine pools. So no queue, list or slot is
 * mid-update when the address space is copied. The parent releases in reverse, leaving the
 * borrowed locks to their holders. The child re-initialises every one of those
 * locks (the forking thread is their only user now), drops the states of the threads that do
 * not exist any more, hands their delayed work to the interpreter's queue, and resets
 * stop-the-world and the GIL.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tstate_internal.h"

/* Deleted interpreters queued before the oldest one may be handed out again. */
#define INTERP_QUARANTINE 8

/* Time after which a waiter for the GIL asks its holder to yield (CPython's 5 ms). */
#define GIL_INTERVAL_NS (5 * NG_NS_PER_MS)

void (*ng_test_interp_delete_stopped_hook)(ng_interp *interp);
uint64_t ng_test_interp_frees;

static ng_pool interp_pool = {.keep = INTERP_QUARANTINE};

/* Live interpreters, for the fork handlers. */
static ng_mutex all_interps_lock;
static ng_interp *all_interps;

ng_mutex *ng_test_interp_list_lock(void) { return &all_interps_lock; }

/* Locks the list. The caller's attached state is detached while it waits (the holder may be
 * the fork handler, which waits for stops), but unlike ng_lock_detach the lock is never kept
 * through the re-attach: it is waited for, let go, and tried again once attached. A thread
 * that held it while a stop suspended it would leave the fork handler of that stop's holder
 * no way on, and the handler cannot tell such a holder from one that is changing the list
 * without reading the list. The list is rarely contended, so fairness does not matter. */
static void lock_list(void)
{
    for (;;) {
        if (ng_mutex_trylock(&all_interps_lock))
            return;
        ng_tstate *ts = ng_tstate_current();
        if (ts == NULL)
            break; /* nothing to suspend: wait for it and keep it */
        ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
        ng_lock_nodetach(&all_interps_lock);
        ng_mutex_unlock(&all_interps_lock);
        /* On failure (the state's interpreter is being deleted) the thread carries on
         * detached, as after any detaching wait. */
        if (ng_tstate_attach_unchecked(ts) != NG_OK)
            break;
    }
    ng_lock_nodetach(&all_interps_lock);
}

static void link_interp(ng_interp *interp)
{
    lock_list();
    interp->all_next = all_interps;
    all_interps = interp;
    ng_mutex_unlock(&all_interps_lock);
}

static void unlink_interp(ng_interp *interp)
{
    lock_list();
    for (ng_interp **p = &all_interps; *p != NULL; p = &(*p)->all_next) {
        if (*p == interp) {
            *p = interp->all_next;
            break;
        }
    }
    interp->all_next = NULL;
    ng_mutex_unlock(&all_interps_lock);
}

int ng_interp_check_live(ng_interp *interp)
{
    if (interp == NULL)
        return NG_EINVAL;
    /* Relaxed: diagnosis of stale pointers only (see ng_tstate_check_live). */
    if (ng_atomic_load(&interp->magic, NG_RELAXED) != NG_INTERP_MAGIC)
        return NG_ERELEASED;
    return NG_OK;
}

/* ---- Life cycle ---------------------------------------------------------------------- */

int ng_interp_new(ng_interp **out)
{
    if (out == NULL)
        return NG_EINVAL;
    *out = NULL;
    ng_tstate_layer_install_hooks();
    ng_interp_impl *impl;
    ng_pool_link *link = ng_pool_take(&interp_pool);
    if (link != NULL) {
        impl = NG_CONTAINER_OF(link, ng_interp_impl, pool_link);
        NG_QUARANTINE_UNPOISON(impl, sizeof(*impl));
        /* Only stale readers can look at the magic; everything else is ours. */
        ng_atomic_store(&impl->pub.magic, NG_INTERP_DEAD_MAGIC, NG_RELAXED);
        size_t from = offsetof(ng_interp, magic) + sizeof(impl->pub.magic);
        memset((char *)impl + from, 0, sizeof(*impl) - from);
    }
    else {
        impl = calloc(1, sizeof(*impl));
        if (impl == NULL)
            return NG_ENOMEM;
    }
    ng_interp *interp = &impl->pub;
    if (ng_qsbr_init(&interp->qsbr) != NG_OK) {
        ng_pool_put(&interp_pool, &impl->pool_link);
        return NG_ENOMEM;
    }
    interp->gil.interval_ns = GIL_INTERVAL_NS;
    interp->object_free = free;
    impl->refs = 1;
    impl->mem_refs = 1;
    /* Relaxed: published to other threads through whatever hands them the pointer. */
    ng_atomic_store(&interp->magic, NG_INTERP_MAGIC, NG_RELAXED);
    link_interp(interp);
    *out = interp;
    return NG_OK;
}

void ng_interp_ref(ng_interp *interp)
{
    /* Relaxed: the caller already holds a reference (or the creator's is alive). */
    ng_atomic_fetch_add(&NG_INTERP_IMPL(interp)->refs, 1, NG_RELAXED);
}

void ng_interp_ref_memory(ng_interp *interp)
{
    /* Relaxed: the caller already holds a reference, so the count cannot reach zero. */
    ng_atomic_fetch_add(&NG_INTERP_IMPL(interp)->mem_refs, 1, NG_RELAXED);
}

void ng_interp_unref_memory(ng_interp *interp)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    /* Acq-rel: every use through another reference (a pinned slot's reader, the teardown)
     * happens-before the segments are freed and the memory reused. */
    if (ng_atomic_fetch_sub(&impl->mem_refs, 1, NG_ACQ_REL) != 1)
        return;
    /* Every slot was unregistered by its state's release (or recycled by a fork child), and
     * every pinned one unpinned. */
    (void)ng_qsbr_fini(&interp->qsbr);
    /* All but the magic (and the pool link) is off limits now. */
    char *base = (char *)impl;
    size_t from = sizeof(uint64_t), link = offsetof(ng_interp_impl, pool_link);
    NG_QUARANTINE_POISON(base + from, link - from);
    NG_QUARANTINE_POISON(base + link + sizeof(ng_pool_link),
                         sizeof(*impl) - link - sizeof(ng_pool_link));
    ng_pool_put(&interp_pool, &impl->pool_link);
    ng_atomic_fetch_add(&ng_test_interp_frees, 1, NG_RELAXED); /* statistics */
}

void ng_interp_unref(ng_interp *interp)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    /* Acq-rel: every use through another reference happens-before the teardown. */
    if (ng_atomic_fetch_sub(&impl->refs, 1, NG_ACQ_REL) != 1)
        return;
    /* Work abandoned by states released after the deletion (their release had already
     * taken over the queue when the deletion came). */
    ng_delayed_queue_run_all(interp, &interp->delayed.queue);
    ng_ext_interp_free(interp);
    ng_atomic_store(&interp->magic, NG_INTERP_DEAD_MAGIC, NG_RELAXED);
    ng_interp_unref_memory(interp);
}

/* Runs everything in the interpreter's queue. Entries run user code, so not under the
 * queue's mutex: the queue is moved out first (a release racing with the deletion may still
 * be adding to it; what it adds later runs with the last reference). */
static void run_interp_queue(ng_interp *interp)
{
    ng_delayed_interp_queue *iq = &interp->delayed;
    ng_lock_nodetach(&iq->mutex);
    ng_delayed_queue taken = {
        .head = iq->queue.head,
        .tail = iq->queue.tail,
        .items = iq->queue.items,
        .bytes = iq->queue.bytes,
    };
    iq->queue.head = iq->queue.tail = NULL;
    /* Relaxed: statistics readers load these without the mutex. */
    ng_atomic_store(&iq->queue.items, 0, NG_RELAXED);
    ng_atomic_store(&iq->queue.bytes, 0, NG_RELAXED);
    ng_atomic_store(&iq->queue.oldest_goal, 0, NG_RELAXED);
    ng_atomic_store(&iq->queue.oldest_ns, 0, NG_RELAXED);
    ng_atomic_store(&iq->has_work, 0, NG_RELAXED); /* a hint for processors */
    ng_mutex_unlock(&iq->mutex);
    ng_delayed_queue_run_all(interp, &taken);
}

int ng_interp_delete(ng_interp *interp)
{
    int err = ng_interp_check_live(interp);
    if (err != NG_OK)
        return err;
    ng_interp_impl *impl = NG_INTERP_IMPL(interp);
    /* Our own state would be torn down under our feet; our own stop would never end. */
    if (ng_tstate_thread_has_state_in(interp) || ng_stw_stopped_by_me(interp))
        return NG_EBUSY;
    ng_lock_nodetach(&interp->head_lock);
    if (impl->deleting) {
        ng_mutex_unlock(&interp->head_lock);
        return NG_ERELEASED;
    }
    impl->deleting = 1; /* no new states from now on */
    ng_mutex_unlock(&interp->head_lock);
    unlink_interp(interp);

    (void)ng_stw_stop(interp, NULL);
    void (*stopped_hook)(ng_interp *) =
        ng_atomic_load(&ng_test_interp_delete_stopped_hook, NG_RELAXED); /* test knob */
    if (stopped_hook != NULL)
        stopped_hook(interp);
    ng_tstate_impl *claimed = NULL;
    ng_lock_nodetach(&interp->head_lock);
    while (interp->threads != NULL) {
        ng_tstate *ts = interp->threads;
        ng_tstate_unlink_locked(ts);
        NG_TSTATE_IMPL(ts)->claimed_next = claimed;
        claimed = NG_TSTATE_IMPL(ts);
        /* Release: the thread that sees SHUTTING_DOWN does nothing but release the state. */
        ng_atomic_store(&ts->state, NG_TSTATE_SHUTTING_DOWN, NG_RELEASE);
        ng_unpark_all(&ts->state);
    }
    ng_mutex_unlock(&interp->head_lock);
    (void)ng_stw_start(interp);

    /* The owners cannot attach any more, so their queues are ours (unless a release got to
     * them first). The list's references go last: until then no state can be freed. */
    for (ng_tstate_impl *c = claimed; c != NULL; c = c->claimed_next) {
        if (!c->releasing) {
            ng_delayed_abandon(&c->pub, NULL);
            ng_atomic_store(&c->pub.cleared, 1, NG_RELAXED);
        }
    }
    run_interp_queue(interp);
    while (claimed != NULL) {
        ng_tstate_impl *next = claimed->claimed_next;
        ng_tstate_decref(&claimed->pub, 1);
        claimed = next;
    }
    ng_atomic_store(&interp->magic, NG_INTERP_DEAD_MAGIC, NG_RELAXED);
    ng_interp_unref(interp);
    return NG_OK;
}

void ng_interp_set_object_free(ng_interp *interp, ng_object_free_fn *fn)
{
    if (ng_interp_check_live(interp) != NG_OK)
        return;
    /* Relaxed: to be set before objects are queued; the queueing thread's own processing
     * reads it after its attach. */
    ng_atomic_store(&interp->object_free, fn != NULL ? fn : free, NG_RELAXED);
}

/* ---- Statistics ----------------------------------------------------------------------- */

static void add_queue(ng_delayed_queue *q, ng_interp_stats *out, int64_t *oldest_ns)
{
    /* Relaxed: each counter is written by its owner; a snapshot of recent values is all a
     * statistic needs. */
    uint64_t items = ng_atomic_load(&q->items, NG_RELAXED);
    out->delayed_items += items;
    out->delayed_bytes += ng_atomic_load(&q->bytes, NG_RELAXED);
    int64_t since = ng_atomic_load(&q->oldest_ns, NG_RELAXED);
    if (items != 0 && since > 0 && (*oldest_ns == 0 || since < *oldest_ns))
        *oldest_ns = since;
}

void ng_interp_get_stats(ng_interp *interp, ng_interp_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof(*out));
    if (ng_interp_check_live(interp) != NG_OK)
        return;
    int64_t oldest_ns = 0;
    ng_lock_nodetach(&interp->head_lock);
    out->threads = interp->nthreads;
    /* The queues, not the QSBR slots: a state may be linked but not registered yet (R7). */
    for (ng_tstate *ts = interp->threads; ts != NULL; ts = ts->next)
        add_queue(&ts->delayed, out, &oldest_ns);
    ng_mutex_unlock(&interp->head_lock);
    uint64_t before = out->delayed_items;
    add_queue(&interp->delayed.queue, out, &oldest_ns);
    out->interp_queue_items = out->delayed_items - before;
    /* Relaxed: statistics. */
    out->stops = ng_atomic_load(&interp->stops, NG_RELAXED);
    out->gil_enabled = ng_atomic_load(&interp->gil.enabled, NG_RELAXED);
    ng_qsbr_get_stats(&interp->qsbr, &out->qsbr);
    if (oldest_ns != 0) {
        int64_t age = ng_monotonic_ns() - oldest_ns;
        out->oldest_pending_age_ns = age > 0 ? age : 0;
    }
}

/* ---- fork() -------------------------------------------------------------------------- */

void (*ng_test_fork_restart_hook)(ng_interp *interp);

static void restart_fork_stop(ng_interp *in)
{
    ng_interp_impl *impl = NG_INTERP_IMPL(in);
    /* Relaxed: a test knob, set while no fork runs. */
    void (*hook)(ng_interp *) = ng_atomic_load(&ng_test_fork_restart_hook, NG_RELAXED);
    if (hook != NULL)
        hook(in);
    impl->fork_stopped = 0;
    if (impl->fork_borrowed & NG_FORK_BORROWED_STOP)
        ; /* its holder restarts it once we restart the world it waits in */
    else if (impl->fork_borrowed & NG_FORK_BORROWED_STW)
        ng_stw_start_borrowed(in);
    else
        ng_stw_start(in);
    impl->fork_borrowed &= ~(NG_FORK_BORROWED_STW | NG_FORK_BORROWED_STOP);
}

/* Restarts the worlds the fork handler stopped (after a failed attempt, or in the parent);
 * one whose stop it took over from a suspended thread stays that thread's. The worlds it
 * stopped without their stw.mutex go first: the holder of that mutex may be suspended in a
 * world that this handler stopped too (earlier in the list), and once that world restarts
 * it goes on to stop the borrowed one with the mutex it holds, which must find that world
 * restarted and no longer ours (else our late restart would undo its stop). */
static void restart_fork_stops(void)
{
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        ng_interp_impl *impl = NG_INTERP_IMPL(in);
        if (impl->fork_stopped && (impl->fork_borrowed & NG_FORK_BORROWED_STW))
            restart_fork_stop(in);
    }
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next)
        if (NG_INTERP_IMPL(in)->fork_stopped)
            restart_fork_stop(in);
}

/* Whether no thread of `in` can run before the calling thread restarts a world: it holds
 * `in`'s world stopped, or the fork handler took over a stop that a thread it keeps
 * suspended holds. */
static bool held_still_by_us(ng_interp *in)
{
    return ng_stw_stopped_by_me(in) || (NG_INTERP_IMPL(in)->fork_borrowed & NG_FORK_BORROWED_STOP);
}

/* Whether `pred` holds for a thread state of a world held still by the calling thread (the
 * only worlds whose SUSPENDED states cannot move before it restarts them). Under
 * all_interps_lock. */
static bool any_state_held_still(bool (*pred)(ng_tstate *ts, const void *arg), const void *arg)
{
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        if (!held_still_by_us(in))
            continue;
        bool found = false;
        ng_lock_nodetach(&in->head_lock);
        for (ng_tstate *ts = in->threads; ts != NULL && !found; ts = ts->next)
            found = pred(ts, arg);
        ng_mutex_unlock(&in->head_lock);
        if (found)
            return true;
    }
    return false;
}

static bool state_holds_lock_unused(ng_tstate *ts, const void *m)
{
    /* Acquire on the state word: SUSPENDED in a world held still by us stays so until we
     * restart, and the owner's clearing of locked_unattached, if it came before the
     * suspension, is then visible (see ng_lock_detach). Acquire on the lock word: pairs with
     * ng_lock_detach's release store, so the earlier holders' changes under `m` are visible
     * to us, who take it over. */
    return ng_atomic_load(&ts->state, NG_ACQUIRE) == NG_TSTATE_SUSPENDED &&
           ng_atomic_load(&NG_TSTATE_IMPL(ts)->locked_unattached, NG_ACQUIRE) == m;
}

/* Whether `m` is held by a thread that got it in ng_lock_detach and waits to attach a state
 * that a stop held still by the calling thread has suspended. That thread cannot use `m`,
 * nor release it, before the restart, which only the caller can make: the fork handler
 * counts `m` as taken. Under all_interps_lock. */
static bool held_by_suspended_thread(ng_mutex *m)
{
    return any_state_held_still(state_holds_lock_unused, m);
}

static bool state_parked_holding_stop(ng_tstate *ts, const void *in)
{
    /* Only the owner parks on its state word, and a SUSPENDED one in a world held still by us
     * stays parked until we restart. The parking lot's bucket lock orders the owner's earlier
     * writes before the count, so the owner id below is the one it wrote last, or newer: it
     * still equals the owner's id only if the owner still holds `in` stopped (the id goes
     * back to 0 before stw.mutex is released, and thread ids are never reused). Relaxed loads
     * otherwise: a SUSPENDED seen here cannot change any more (a stale value only makes us
     * miss the case and retry), and the thread id was set before the state was published. */
    return ng_atomic_load(&ts->state, NG_RELAXED) == NG_TSTATE_SUSPENDED &&
           ng_parking_lot_waiters(&ts->state) > 0 &&
           ng_atomic_load(&NG_INTERP_IMPL((ng_interp *)in)->stw_owner, NG_RELAXED) ==
               ng_atomic_load(&ts->thread_id, NG_RELAXED);
}

/* Whether the thread that holds `in`'s world stopped is parked, waiting for the restart of a
 * world held still by the calling thread. Its stop is then complete (a stop waits, and
 * restarts, without detaching, so its requester cannot be parked on a state of its own in
 * the middle of one) and cannot end before our restart: every thread of `in` stays
 * suspended through the fork as if we had stopped the world ourselves. Under
 * all_interps_lock. */
static bool stop_holder_suspended_by_us(ng_interp *in)
{
    return ng_world_stopped(in) && any_state_held_still(state_parked_holding_stop, in);
}

/* Stops every listed world but those this thread holds stopped itself (it restarts them),
 * with the calling thread's attached state as requester where it has one. A world whose
 * stw.mutex or stop a thread kept suspended by us holds is taken over instead (stopped
 * without the mutex, or left stopped by its holder). Gives up, with every stop it made
 * undone, on a world whose stop another thread holds. */
static bool stop_worlds_for_fork(void)
{
    ng_tstate *current = ng_tstate_current();
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        ng_interp_impl *impl = NG_INTERP_IMPL(in);
        impl->fork_stopped = 0;
        impl->fork_borrowed = 0;
        if (ng_stw_stopped_by_me(in))
            continue;
        ng_tstate *requester = current != NULL && current->interp == in ? current : NULL;
        if (ng_stw_try_stop(in, requester) != NG_OK) {
            if (held_by_suspended_thread(&in->stw.mutex)) {
                ng_stw_stop_borrowed(in, requester);
                impl->fork_borrowed |= NG_FORK_BORROWED_STW;
            }
            else if (stop_holder_suspended_by_us(in)) {
                impl->fork_borrowed |= NG_FORK_BORROWED_STOP;
            }
            else {
                restart_fork_stops();
                return false;
            }
        }
        /* Also for a borrowed stop: the child resets it like ours (its holder is gone). */
        impl->fork_stopped = 1;
    }
    return true;
}

/* Unlocks the QSBR mutexes taken by lock_qsbr_for_fork before `end` (NULL: all). */
static void unlock_qsbr_for_fork(ng_interp *end)
{
    for (ng_interp *in = all_interps; in != end; in = in->all_next) {
        ng_interp_impl *impl = NG_INTERP_IMPL(in);
        if (!(impl->fork_borrowed & NG_FORK_BORROWED_QSBR))
            ng_mutex_unlock(&in->qsbr.mutex);
        impl->fork_borrowed &= ~NG_FORK_BORROWED_QSBR;
    }
}

/* Takes every listed QSBR mutex, or none: a holder may be a thread our stops suspended. One
 * held unused by such a thread counts as taken (held_by_suspended_thread). */
static bool lock_qsbr_for_fork(void)
{
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        if (ng_mutex_trylock(&in->qsbr.mutex))
            continue;
        if (held_by_suspended_thread(&in->qsbr.mutex)) {
            NG_INTERP_IMPL(in)->fork_borrowed |= NG_FORK_BORROWED_QSBR;
            continue;
        }
        unlock_qsbr_for_fork(in);
        return false;
    }
    return true;
}

/* Between two attempts of the fork handler: detached, so that a stop another thread holds or
 * is making can count this thread as stopped, and holding nothing. */
static void fork_backoff(int64_t *pause_ns)
{
    ng_tstate *ts = ng_tstate_current();
    if (ts != NULL)
        ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    struct timespec t = {.tv_sec = 0, .tv_nsec = (long)*pause_ns};
    nanosleep(&t, NULL);
    if (*pause_ns < NG_NS_PER_MS)
        *pause_ns *= 2;
    /* A deleted interpreter leaves us detached, as a lock's block hooks would. */
    if (ts != NULL)
        (void)ng_tstate_attach_unchecked(ts);
}

void ng_tstate_layer_before_fork(void)
{
    /* The list's lock, the stops and the QSBR mutexes are taken all or nothing, each with a
     * try-lock (the order and why are in fork.c). */
    int64_t pause_ns = 1000;
    for (;;) {
        if (ng_mutex_trylock(&all_interps_lock)) {
            if (stop_worlds_for_fork()) {
                if (lock_qsbr_for_fork())
                    break;
                restart_fork_stops();
            }
            ng_mutex_unlock(&all_interps_lock);
        }
        fork_backoff(&pause_ns);
    }
    /* Never held across a wait, and taken while the world is stopped by its own users
     * (delayed_free.c's barrier): after the stops. */
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        /* delayed_free.c's order: the queue's mutex, then head_lock. */
        ng_lock_nodetach(&in->delayed.mutex);
        ng_lock_nodetach(&in->head_lock);
    }
    ng_lock_nodetach(&interp_pool.lock);
    ng_tstate_layer_lock_pool();
}

void ng_tstate_layer_after_fork_parent(void)
{
    ng_tstate_layer_unlock_pool();
    ng_mutex_unlock(&interp_pool.lock);
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        ng_mutex_unlock(&in->head_lock);
        ng_mutex_unlock(&in->delayed.mutex);
    }
    unlock_qsbr_for_fork(NULL);
    restart_fork_stops();
    ng_mutex_unlock(&all_interps_lock);
}

void ng_tstate_layer_after_fork_child(void)
{
    ng_mutex_at_fork_reinit(&all_interps_lock);
    ng_mutex_at_fork_reinit(&interp_pool.lock);
    ng_tstate_layer_reinit_pool();
    ng_tstate *current = ng_tstate_current();
    for (ng_interp *in = all_interps; in != NULL; in = in->all_next) {
        ng_mutex_at_fork_reinit(&in->head_lock);
        ng_mutex_at_fork_reinit(&in->delayed.mutex);
        /* The QSBR mutex is re-initialised by ng_qsbr_after_fork. */
        ng_tstate_after_fork_child(in);
        ng_stw_after_fork_child(in);
        ng_gil_after_fork_child(in, current != NULL && current->interp == in ? current : NULL);
        uint64_t n = 0;
        for (ng_tstate *ts = in->threads; ts != NULL; ts = ts->next)
            n++;
        in->nthreads = n;
    }
}
