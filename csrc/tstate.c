/* Thread states: creation, binding to the OS thread, attach/detach, the checkpoint, release,
 * and the block hooks that detach a thread while it sleeps in a lock.
 *
 * Words and who writes them:
 *   state      the owner (ATTACHED <-> DETACHED, ATTACHED -> SUSPENDED), a stop-the-world
 *              requester (DETACHED -> SUSPENDED by CAS, SUSPENDED -> DETACHED at restart) and
 *              the interpreter's deletion (-> SHUTTING_DOWN). Others park on it.
 *   holds_gil  the owner; others only read it.
 *   pending    anyone (atomic OR / AND).
 *   refcount   2 at creation: the interpreter's list and the OS thread. The list's reference
 *              goes with whoever unlinks the state (its release or the interpreter's
 *              deletion), the thread's with the release. The last one quarantines the memory
 *              (dead magic, FIFO pool, never freed), so stale pointers get NG_ERELEASED.
 *   qsbr       set once after registration (R7: NULL while the state is linked but not yet
 *              registered), cleared by the release.
 * Everything else is the owner's, or set before the state is published.
 *
 * Thread exit: a pthread key destructor releases every state still bound to the exiting
 * thread, exactly as ng_tstate_release would (it detaches, hands the delayed work to the
 * interpreter, unlinks, releases the GIL before leaving QSBR: R1).
 * fork(): the child keeps the forking thread's states; every other thread's state is dropped
 * by ng_tstate_after_fork_child (both references, since its thread does not exist there).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tstate_internal.h"

/* States queued in the quarantine before the oldest one may be handed out again. */
#define TSTATE_QUARANTINE 64

int ng_test_fail_tstate_alloc;
void (*ng_test_tstate_linked_hook)(ng_tstate *ts);
void (*ng_test_attach_window_hook)(ng_tstate *ts);
uint64_t ng_test_tstate_frees;
uint64_t ng_test_tstate_bad_frees;

static ng_pool tstate_pool = {.keep = TSTATE_QUARANTINE};

/* The state this thread has attached (at most one), and the states bound to it (newest first,
 * linked through thread_next). */
static NG_THREAD_LOCAL ng_tstate *tls_current;
static NG_THREAD_LOCAL ng_tstate *tls_bound;

static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;
static int exit_key_status = NG_ENOMEM;

#ifdef NOGIL_TORTURE
void ng_tstate_torture_yield(void)
{
    static NG_THREAD_LOCAL uint64_t rng;
    if (rng == 0)
        rng = ng_thread_id() * UINT64_C(0x9e3779b97f4a7c15) | 1;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    if ((rng & 3) == 0)
        sched_yield();
}
#endif

/* ---- Validation ------------------------------------------------------------------------ */

int ng_tstate_check_live(ng_tstate *ts)
{
    if (ts == NULL)
        return NG_EINVAL;
    /* Relaxed: a stale pointer may be read while the pool hands the memory out again; the
     * magic is only a diagnosis, the state's own synchronisation is elsewhere. */
    if (ng_atomic_load(&ts->magic, NG_RELAXED) != NG_TSTATE_MAGIC)
        return NG_ERELEASED;
    return NG_OK;
}

int ng_tstate_check_owner(ng_tstate *ts)
{
    int err = ng_tstate_check_live(ts);
    if (err != NG_OK)
        return err;
    /* Relaxed: thread_id is written before the state is handed to its owner; a thread that
     * is not the owner can only get a "not mine" answer, whatever value it reads. */
    if (ng_atomic_load(&ts->thread_id, NG_RELAXED) != ng_thread_id())
        return NG_EWRONGTHREAD;
    return NG_OK;
}

ng_tstate *ng_tstate_current(void) { return tls_current; }

bool ng_tstate_thread_has_state_in(ng_interp *interp)
{
    for (ng_tstate *ts = tls_bound; ts != NULL; ts = ts->thread_next)
        if (ts->interp == interp)
            return true;
    return false;
}

/* ---- Quarantine pool ------------------------------------------------------------------- */

ng_pool_link *ng_pool_take(ng_pool *pool)
{
    ng_lock_nodetach(&pool->lock);
    ng_pool_link *link = NULL;
    if (pool->count > pool->keep) {
        link = pool->head;
        pool->head = link->next;
        if (pool->head == NULL)
            pool->tail = NULL;
        pool->count--;
    }
    ng_mutex_unlock(&pool->lock);
    return link;
}

void ng_pool_put(ng_pool *pool, ng_pool_link *link)
{
    link->next = NULL;
    ng_lock_nodetach(&pool->lock);
    if (pool->tail != NULL)
        pool->tail->next = link;
    else
        pool->head = link;
    pool->tail = link;
    pool->count++;
    ng_mutex_unlock(&pool->lock);
}

void ng_tstate_layer_lock_pool(void) { ng_lock_nodetach(&tstate_pool.lock); }

void ng_tstate_layer_unlock_pool(void) { ng_mutex_unlock(&tstate_pool.lock); }

void ng_tstate_layer_reinit_pool(void) { ng_mutex_at_fork_reinit(&tstate_pool.lock); }

/* ---- Allocation and references ----------------------------------------------------------- */

static ng_tstate_impl *tstate_alloc(void)
{
    /* Relaxed: a test knob, set while no state is being created elsewhere. */
    if (ng_atomic_load(&ng_test_fail_tstate_alloc, NG_RELAXED) > 0) {
        ng_atomic_fetch_sub(&ng_test_fail_tstate_alloc, 1, NG_RELAXED);
        return NULL;
    }
    ng_pool_link *link = ng_pool_take(&tstate_pool);
    if (link == NULL)
        return calloc(1, sizeof(ng_tstate_impl));
    ng_tstate_impl *impl = NG_CONTAINER_OF(link, ng_tstate_impl, pool_link);
    NG_QUARANTINE_UNPOISON(impl, sizeof(*impl));
    /* A GIL waiter may still OR a drop request into `pending` through a stale holder
     * pointer, and a stale caller may read the magic: those two words are reset atomically,
     * everything from `magic` on is plain (nobody else writes it). */
    ng_atomic_store(&impl->pub.pending, 0, NG_RELAXED);
    ng_atomic_store(&impl->pub.magic, NG_TSTATE_DEAD_MAGIC, NG_RELAXED);
    size_t from = offsetof(ng_tstate, magic) + sizeof(impl->pub.magic);
    memset((char *)impl + from, 0, sizeof(*impl) - from);
    ng_atomic_store(&impl->pub.state, NG_TSTATE_DETACHED, NG_RELAXED);
    ng_atomic_store(&impl->pub.holds_gil, 0, NG_RELAXED);
    return impl;
}

/* Quarantines the memory of a state nobody references any more. */
static void tstate_free(ng_tstate *ts)
{
    if (ng_atomic_load(&ts->magic, NG_RELAXED) != NG_TSTATE_MAGIC) {
        /* A reference counting bug: never queue the memory twice. */
        ng_atomic_fetch_add(&ng_test_tstate_bad_frees, 1, NG_RELAXED);
        return;
    }
    ng_interp *interp = ts->interp;
    ng_gil_forget_holder(ts);
    ng_atomic_store(&ts->magic, NG_TSTATE_DEAD_MAGIC, NG_RELAXED);
    ng_tstate_impl *impl = NG_TSTATE_IMPL(ts);
    /* Everything from `qsbr` on, except the pool link: state, holds_gil, pending and magic
     * stay readable (stale GIL waiters, stale callers). */
    char *base = (char *)impl;
    size_t from = offsetof(ng_tstate, qsbr), link = offsetof(ng_tstate_impl, pool_link);
    NG_QUARANTINE_POISON(base + from, link - from);
    NG_QUARANTINE_POISON(base + link + sizeof(ng_pool_link),
                         sizeof(*impl) - link - sizeof(ng_pool_link));
    ng_pool_put(&tstate_pool, &impl->pool_link);
    ng_atomic_fetch_add(&ng_test_tstate_frees, 1, NG_RELAXED); /* statistics */
    ng_interp_unref(interp);
}

void ng_tstate_decref(ng_tstate *ts, intptr_t n)
{
    /* Acq-rel: every use of the state by the other reference's owner happens-before the
     * free by whoever drops the last reference. */
    if (ng_atomic_fetch_sub(&ts->refcount, n, NG_ACQ_REL) == n)
        tstate_free(ts);
}

/* ---- Binding to the OS thread ------------------------------------------------------------ */

static void release_bound_states_at_exit(void *value)
{
    (void)value;
    /* The states are released newest first; a release that fails (it cannot for a state of
     * this very thread, but a bug must not turn into an endless loop) still unbinds it. */
    while (tls_bound != NULL) {
        ng_tstate *ts = tls_bound;
        if (ng_tstate_release(ts) != NG_OK && tls_bound == ts)
            tls_bound = ts->thread_next;
    }
    tls_current = NULL;
}

static void create_exit_key(void)
{
    exit_key_status =
        pthread_key_create(&exit_key, release_bound_states_at_exit) == 0 ? NG_OK : NG_ENOMEM;
}

static void bind_to_thread(ng_tstate *ts)
{
    ts->thread_next = tls_bound;
    tls_bound = ts;
    /* The key's value only makes the destructor run at thread exit (the list is in tls_bound).
     * It is reset to NULL before a destructor runs, so a state created by a destructor (e.g.
     * by a delayed callback run at exit) sets it again and gets another round. */
    if (pthread_getspecific(exit_key) == NULL)
        pthread_setspecific(exit_key, ts);
}

static void unbind_from_thread(ng_tstate *ts)
{
    for (ng_tstate **p = &tls_bound; *p != NULL; p = &(*p)->thread_next) {
        if (*p == ts) {
            *p = ts->thread_next;
            break;
        }
    }
    ts->thread_next = NULL;
    if (tls_bound == NULL && pthread_getspecific(exit_key) != NULL)
        pthread_setspecific(exit_key, NULL);
}

/* ---- List membership ----------------------------------------------------------------- */

void ng_tstate_unlink_locked(ng_tstate *ts)
{
    ng_interp *interp = ts->interp;
    ng_stw *stw = &interp->stw;
    if (ts->prev != NULL)
        ts->prev->next = ts->next;
    else
        interp->threads = ts->next;
    if (ts->next != NULL)
        ts->next->prev = ts->prev;
    ts->prev = ts->next = NULL;
    NG_TSTATE_IMPL(ts)->linked = 0;
    interp->nthreads--;
    if (stw->requested) {
        if (stw->requester == ts) {
            /* The memory may be reused before the restart; the restart must not skip a new
             * state that happens to get this address. */
            stw->requester = NULL;
        }
        else if (ng_atomic_load(&ts->state, NG_RELAXED) != NG_TSTATE_SUSPENDED) {
            /* The requester counted this state and it will never suspend now. Relaxed: the
             * state word only changes under head_lock (by the requester) or is ours. */
            if (--stw->countdown == 0)
                ng_event_notify(&stw->stop_event);
        }
    }
}

/* ---- Creation ------------------------------------------------------------------------- */

static void init_state(ng_tstate *ts, ng_interp *interp)
{
    ts->interp = interp;
    ts->refcount = 2;
    ts->thread_id = ng_thread_id();
    ts->native_tid = (pid_t)syscall(SYS_gettid);
    /* Relaxed: the state is not published yet; the list insertion under head_lock publishes
     * it to other threads. */
    ng_atomic_store(&ts->magic, NG_TSTATE_MAGIC, NG_RELAXED);
}

/* Gives `ts` a fresh QSBR slot (fork child, when its old slot was recycled). */
static int register_new_slot(ng_tstate *ts)
{
    ng_qsbr_slot *slot;
    int err = ng_qsbr_reserve(&ts->interp->qsbr, &slot);
    if (err != NG_OK)
        return err;
    err = ng_qsbr_register(slot, ts);
    if (err != NG_OK) {
        ng_qsbr_unreserve(slot);
        return err;
    }
    /* Release: a reader of ts->qsbr (stall reports, the Go wrapper) sees a registered slot. */
    ng_atomic_store(&ts->qsbr, slot, NG_RELEASE);
    return NG_OK;
}

int ng_tstate_new(ng_interp *interp, ng_tstate **out)
{
    if (out == NULL)
        return NG_EINVAL;
    *out = NULL;
    int err = ng_interp_check_live(interp);
    if (err != NG_OK)
        return err;
    pthread_once(&exit_key_once, create_exit_key);
    if (exit_key_status != NG_OK)
        return exit_key_status;

    /* The interpreter's reference first, taken only while it is not being deleted: once the
     * deletion has dropped the last reference, a reference taken after a blocking reserve
     * would revive it, and its second teardown would quarantine the memory twice. */
    ng_lock_nodetach(&interp->head_lock);
    bool deleting = NG_INTERP_IMPL(interp)->deleting;
    if (!deleting)
        ng_interp_ref(interp);
    ng_mutex_unlock(&interp->head_lock);
    if (deleting)
        return NG_ERELEASED;

    /* The slot first (R18: a later failure gives it back), outside head_lock (R16: reserve
     * may block on the QSBR mutex, whose holders may take head_lock). */
    ng_qsbr_slot *slot;
    err = ng_qsbr_reserve(&interp->qsbr, &slot);
    if (err != NG_OK) {
        ng_interp_unref(interp);
        return err == NG_ENOMEM ? NG_ENOMEM : err;
    }
    ng_tstate_impl *impl = tstate_alloc();
    if (impl == NULL) {
        ng_qsbr_unreserve(slot);
        ng_interp_unref(interp);
        return NG_ENOMEM;
    }
    ng_tstate *ts = &impl->pub;
    init_state(ts, interp);

    ng_lock_nodetach(&interp->head_lock);
    if (NG_INTERP_IMPL(interp)->deleting) {
        ng_mutex_unlock(&interp->head_lock);
        ng_qsbr_unreserve(slot);
        ng_tstate_decref(ts, 2);
        return NG_ERELEASED;
    }
    ts->id = ++interp->next_id;
    ts->next = interp->threads;
    if (ts->next != NULL)
        ts->next->prev = ts;
    interp->threads = ts;
    interp->nthreads++;
    impl->linked = 1;
    /* A stop-the-world in progress counted the states before this one; this one starts
     * suspended and the restart resumes it (spec 5.3). Not when this thread is the one that
     * stopped the world: it runs during its own stop, and would wait for itself in attach.
     * (Such a state is not counted; the countdown is over, so its unlink's decrement is
     * harmless.) Relaxed: the state is not visible to its owner yet and others read it under
     * head_lock. */
    if (interp->stw.requested && !ng_stw_stopped_by_me(interp))
        ng_atomic_store(&ts->state, NG_TSTATE_SUSPENDED, NG_RELAXED);
    ng_mutex_unlock(&interp->head_lock);

    /* R7: linked, not yet registered. Whatever walks the list meanwhile (stop-the-world,
     * statistics, deletion) must not use ts->qsbr. */
    NG_TSTATE_TORTURE_YIELD();
    void (*linked_hook)(ng_tstate *) = ng_atomic_load(&ng_test_tstate_linked_hook, NG_RELAXED);
    if (linked_hook != NULL)
        linked_hook(ts);

    err = ng_qsbr_register(slot, ts);
    if (err != NG_OK) {
        /* Only a broken slot can get here; undo in reverse. */
        ng_lock_nodetach(&interp->head_lock);
        bool unlinked = impl->linked;
        if (unlinked)
            ng_tstate_unlink_locked(ts);
        ng_mutex_unlock(&interp->head_lock);
        ng_qsbr_unreserve(slot);
        ng_tstate_decref(ts, unlinked ? 2 : 1);
        return err;
    }
    /* Release: see register_new_slot. */
    ng_atomic_store(&ts->qsbr, slot, NG_RELEASE);
    bind_to_thread(ts);
    *out = ts;
    return NG_OK;
}

/* ---- Pinned slots ------------------------------------------------------------------- */

int ng_tstate_pin_slot(ng_tstate *ts, ng_qsbr_slot **slot_out)
{
    if (slot_out == NULL)
        return NG_EINVAL;
    *slot_out = NULL;
    int err = ng_tstate_check_live(ts);
    if (err != NG_OK)
        return err == NG_ERELEASED ? NG_ESTATE : err;
    /* Acquire: pairs with the release store of a registration (see register_new_slot). */
    ng_qsbr_slot *slot = ng_atomic_load(&ts->qsbr, NG_ACQUIRE);
    if (slot == NULL)
        return NG_ESTATE;
    /* The memory first: the live state holds a reference to the interpreter, so it cannot be
     * torn down meanwhile, and once the slot is pinned its reader may need the memory. */
    ng_interp_ref_memory(ts->interp);
    err = ng_qsbr_pin(slot);
    if (err != NG_OK) {
        ng_interp_unref_memory(ts->interp);
        return err;
    }
    *slot_out = slot;
    return NG_OK;
}

void ng_tstate_unpin_slot(ng_qsbr_slot *slot)
{
    if (slot == NULL || slot->shared == NULL)
        return;
    /* The pin's reference keeps the memory, so slot->shared still is this interpreter's. */
    ng_interp *interp = NG_CONTAINER_OF(slot->shared, ng_interp, qsbr);
    (void)ng_qsbr_unpin(slot);
    ng_interp_unref_memory(interp);
}

/* ---- Attach / detach ----------------------------------------------------------------- */

/* Parks until a stop-the-world restart (or the interpreter's deletion) moves the state out of
 * SUSPENDED. Never detaches (there is nothing attached) and cannot be cancelled: the thread
 * must not run while the world is stopped. */
static void wait_while_suspended(ng_tstate *ts)
{
    ng_cancel *token = ng_cancel_install(NULL);
    uint32_t expected = NG_TSTATE_SUSPENDED;
    /* Acquire: pairs with the restart's release store, see ng_tstate_attach_unchecked. */
    while (ng_atomic_load(&ts->state, NG_ACQUIRE) == NG_TSTATE_SUSPENDED)
        (void)ng_park(&ts->state, &expected, sizeof expected, -1, NULL, NG_WAIT_DEFAULT);
    ng_cancel_install(token);
}

int ng_tstate_attach_unchecked(ng_tstate *ts)
{
    if (ts->qsbr == NULL) {
        /* Only after fork() when the child could not give this state a new slot. */
        int err = register_new_slot(ts);
        if (err != NG_OK)
            return err;
    }
    ng_interp *interp = ts->interp;
    for (;;) {
        bool took_gil = ng_gil_take(ts);
        NG_TSTATE_TORTURE_YIELD();
        /* Relaxed: a test knob, set while no other thread attaches. */
        void (*window_hook)(ng_tstate *) = ng_atomic_load(&ng_test_attach_window_hook, NG_RELAXED);
        if (window_hook != NULL)
            window_hook(ts);
        uint32_t seen = NG_TSTATE_DETACHED;
        /* Acquire: pairs with the release stores of DETACHED (restart) and SUSPENDED (the
         * requester's CAS), so what a requester did to this state's data while the world was
         * stopped happens-before our use of it. */
        if (ng_atomic_cas(&ts->state, &seen, NG_TSTATE_ATTACHED, NG_ACQUIRE, NG_ACQUIRE)) {
            /* Spec 5.3 step e: the GIL was enabled between our no-op take and the CAS (a whole
             * stop-the-world happened in between). Undo and take it this time. It cannot go
             * the other way: only a GIL holder disables it. Relaxed: the enable happened
             * before the restart that our acquire CAS synchronised with. */
            if (ng_gil_enabled(interp) && !ng_atomic_load(&ts->holds_gil, NG_RELAXED)) {
                ng_atomic_store(&ts->state, NG_TSTATE_DETACHED, NG_RELEASE);
                continue;
            }
            break;
        }
        /* A suspended thread holds no GIL, so a stop-the-world never waits on it and the fork
         * child never inherits a GIL held by a dead thread. */
        if (took_gil)
            ng_gil_drop(ts);
        if (seen == NG_TSTATE_SHUTTING_DOWN)
            return NG_CANCELLED;
        if (seen != NG_TSTATE_SUSPENDED)
            return NG_ESTATE;
        wait_while_suspended(ts);
    }
    tls_current = ts;
    /* QSBR online only now that the state says ATTACHED: a suspended thread is offline. */
    ng_qsbr_attach(ts->qsbr);
    return NG_OK;
}

void ng_tstate_detach_to(ng_tstate *ts, uint32_t new_state)
{
    /* Offline before the state word says so: a requester that sees DETACHED or SUSPENDED may
     * treat this thread as quiescent. */
    ng_qsbr_detach(ts->qsbr);
    /* Release: our accesses while attached happen-before a requester's acquire CAS. */
    ng_atomic_store(&ts->state, new_state, NG_RELEASE);
    tls_current = NULL;
    if (ng_atomic_load(&ts->holds_gil, NG_RELAXED))
        ng_gil_drop(ts);
}

int ng_tstate_attach(ng_tstate *ts)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    if (tls_current != NULL)
        return NG_ESTATE; /* this state, or another one of this thread, is attached */
    return ng_tstate_attach_unchecked(ts);
}

int ng_tstate_detach(ng_tstate *ts)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    if (tls_current != ts)
        return NG_ESTATE;
    ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    return NG_OK;
}

/* ---- Checkpoint and pending bits ------------------------------------------------------- */

void ng_tstate_set_pending(ng_tstate *ts, uintptr_t bits)
{
    if (ts == NULL)
        return;
    /* Release: what the setter prepared for the handler (e.g. its delayed queue state) is
     * visible to the owner's acquire fetch_and in the checkpoint. */
    ng_atomic_fetch_or(&ts->pending, bits, NG_RELEASE);
}

void ng_tstate_clear_pending(ng_tstate *ts, uintptr_t bits)
{
    if (ts == NULL)
        return;
    /* Relaxed: clearing publishes nothing; the bits are requests, re-checked by handlers. */
    ng_atomic_fetch_and(&ts->pending, ~bits, NG_RELAXED);
}

int ng_tstate_checkpoint_slow(ng_tstate *ts)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    if (tls_current != ts) {
        return ng_atomic_load(&ts->state, NG_RELAXED) == NG_TSTATE_SHUTTING_DOWN ? NG_CANCELLED
                                                                                 : NG_ESTATE;
    }
    ng_qsbr_quiescent_state(ts->qsbr);
    /* Take the bits we handle in one RMW, so a request set meanwhile is either handled now or
     * stays for the next checkpoint. Acquire: pairs with ng_tstate_set_pending. Other bits
     * (calls, merges) belong to their own handlers. */
    const uintptr_t ours = NG_PENDING_STOP | NG_PENDING_GIL_DROP | NG_PENDING_DELAYED;
    uintptr_t bits = ng_atomic_fetch_and(&ts->pending, ~ours, NG_ACQUIRE) & ours;
    if (bits & NG_PENDING_STOP) {
        err = ng_stw_suspend_self(ts);
        if (err != NG_OK)
            return err;
    }
    if ((bits & NG_PENDING_GIL_DROP) && ng_atomic_load(&ts->holds_gil, NG_RELAXED)) {
        /* Yield: the waiter that asked has waited longer than the mutex's hand-off threshold,
         * so the unlock hands the GIL to it rather than letting us take it back. */
        ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
        err = ng_tstate_attach_unchecked(ts);
        if (err != NG_OK)
            return err;
    }
    /* Relaxed: should_process is set by this thread's own goal computations. */
    if ((bits & NG_PENDING_DELAYED) || ng_atomic_load(&ts->qsbr->should_process, NG_RELAXED)) {
        /* With the back-pressure wait: a checkpoint holds no references. */
        int n = ng_delayed_checkpoint(ts);
        if (n < 0)
            return n;
    }
    return NG_OK;
}

/* ---- Release ---------------------------------------------------------------------------- */

int ng_tstate_release(ng_tstate *ts)
{
    int err = ng_tstate_check_owner(ts);
    if (err != NG_OK)
        return err;
    ng_tstate_impl *impl = NG_TSTATE_IMPL(ts);
    ng_interp *interp = ts->interp;

    /* Take over the delayed-free queue unless the interpreter's deletion already claimed the
     * state (then it abandons the queue itself). */
    ng_lock_nodetach(&interp->head_lock);
    bool owns_queue = impl->linked;
    if (owns_queue)
        impl->releasing = 1;
    ng_mutex_unlock(&interp->head_lock);

    if (owns_queue) {
        /* A state of another interpreter attached on this thread holds back no stop-the-world
         * of ours: handing over and clearing beside it would run the extensions' tstate_clear
         * (the allocator's abandon rewrites this state's heaps) while our world may be stopped
         * and its stopper walking them. Detach it for the hand-over (this state then attaches,
         * waiting out a stop) and attach it again afterwards. */
        ng_tstate *elsewhere = tls_current != NULL && tls_current->interp != interp ? tls_current
                                                                                   : NULL;
        if (elsewhere != NULL)
            ng_tstate_detach_to(elsewhere, NG_TSTATE_DETACHED);
        /* A detached state attaches for the hand-over when the thread has nothing else
         * attached: processing needs an online slot, and work handed over unprocessed by
         * threads that exit detached would pile up in the interpreter queue (spec R6). */
        if (tls_current == NULL)
            (void)ng_tstate_attach(ts); /* fails only when shutting down: hand over as is */
        if (tls_current == ts) {
            /* Still attached (slot online): run what is ready, then hand over the rest and
             * let the abandon process the interpreter's queue with our own slot, so work
             * left by short-lived threads does not pile up (spec R6). */
            (void)ng_process_delayed(ts);
            ng_delayed_abandon(ts, ts);
        }
        else {
            ng_tstate *caller = tls_current;
            ng_delayed_abandon(ts, caller != NULL && caller->interp == interp ? caller : NULL);
        }
        /* After the hand-over, whose callbacks may still free into the state's heaps. */
        ng_ext_clear_tstate(ts);
        ng_atomic_store(&ts->cleared, 1, NG_RELAXED); /* diagnostics only */
        if (elsewhere != NULL) {
            if (tls_current == ts)
                ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
            /* Fails only if that interpreter is being deleted: the thread then carries on
             * detached there, as after a blocking wait (see the block hooks). */
            if (tls_current == NULL)
                (void)ng_tstate_attach_unchecked(elsewhere);
        }
    }
    /* A block hook may have detached us inside the abandon (and failed to re-attach if the
     * interpreter is being deleted), hence the re-check. */
    if (tls_current == ts)
        ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);

    ng_lock_nodetach(&interp->head_lock);
    bool unlinked_here = impl->linked;
    if (unlinked_here)
        ng_tstate_unlink_locked(ts);
    ng_mutex_unlock(&interp->head_lock);
    NG_TSTATE_TORTURE_YIELD();

    /* R1: the GIL goes before the QSBR unregistration, which may block on the QSBR mutex
     * whose holder may be waiting for the GIL. (The detach above released it already; this
     * is the guard for a state detached some other way.) */
    if (ng_atomic_load(&ts->holds_gil, NG_RELAXED))
        ng_gil_drop(ts);
    ng_qsbr_slot *slot = ts->qsbr;
    if (slot != NULL) {
        ng_atomic_store(&ts->qsbr, NULL, NG_RELAXED);
        ng_qsbr_unregister(slot);
    }
    unbind_from_thread(ts);
    ng_tstate_decref(ts, unlinked_here ? 2 : 1);
    return NG_OK;
}

/* ---- Block hooks ----------------------------------------------------------------------- */

/* Around the sleep of a lock-family wait with NG_WAIT_DETACH: detach the thread's attached
 * state (so it stalls neither grace periods nor stop-the-world) and re-attach afterwards.
 * The re-attach blocks only without NG_WAIT_DETACH (GIL mutex, parking while SUSPENDED), so
 * the hooks never run nested. If the interpreter was deleted meanwhile the re-attach fails
 * and the thread carries on detached; its next attach reports NG_CANCELLED. */
static void *detach_before_block(void)
{
    ng_tstate *ts = tls_current;
    if (ts == NULL)
        return NULL;
    ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    return ts;
}

static void attach_after_block(void *cookie)
{
    ng_tstate *ts = cookie;
    if (ts == NULL)
        return;
    (void)ng_tstate_attach_unchecked(ts);
}

static const ng_block_hooks detach_hooks = {
    .before_block = detach_before_block,
    .after_block = attach_after_block,
};

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void install_block_hooks(void) { ng_set_block_hooks(&detach_hooks); }

/* Installed when the first interpreter is created: before that no state can be attached, and
 * a process that never uses this layer keeps the parking lot's default (no hooks). */
void ng_tstate_layer_install_hooks(void) { pthread_once(&hooks_once, install_block_hooks); }

/* ---- fork() --------------------------------------------------------------------------- */

void ng_tstate_after_fork_child(ng_interp *interp)
{
    uint64_t me = ng_thread_id();
    pid_t tid = (pid_t)syscall(SYS_gettid);
    ng_tstate *current = tls_current != NULL && tls_current->interp == interp ? tls_current
                                                                              : NULL;
    /* The QSBR slot that stays: the attached state's (it may be online), else the first
     * survivor's. Other survivors get a fresh slot below. */
    ng_qsbr_slot *keep = current != NULL ? current->qsbr : NULL;
    for (ng_tstate *ts = interp->threads; keep == NULL && ts != NULL; ts = ts->next)
        if (ts->thread_id == me)
            keep = ts->qsbr;
    ng_qsbr_after_fork(&interp->qsbr, keep);

    ng_tstate *ts = interp->threads;
    while (ts != NULL) {
        ng_tstate *next = ts->next;
        if (ts->thread_id == me) {
            ts->native_tid = tid;
            ng_tstate_clear_pending(ts, NG_PENDING_STOP | NG_PENDING_GIL_DROP);
            /* Our own detached states were suspended by the prepare handler's stop (a stop this
             * thread made itself before forking stays in force: it will restart it). */
            if (ts->state == NG_TSTATE_SUSPENDED && NG_INTERP_IMPL(interp)->fork_stopped)
                ts->state = NG_TSTATE_DETACHED;
            if (ts->qsbr != keep && ts->qsbr != NULL) {
                ts->qsbr = NULL;
                (void)register_new_slot(ts); /* on failure the next attach retries */
            }
        }
        else {
            /* Its thread does not exist here: no release will come, both references go. Its
             * delayed work goes to the interpreter; the slot was recycled above. */
            ng_tstate_unlink_locked(ts);
            ng_delayed_abandon(ts, NULL);
            ts->qsbr = NULL;
            ng_ext_clear_tstate(ts);
            ts->refcount = 0;
            tstate_free(ts);
        }
        ts = next;
    }
    ng_tstate *survivor = current;
    for (ng_tstate *ts = interp->threads; survivor == NULL && ts != NULL; ts = ts->next)
        if (ts->thread_id == me)
            survivor = ts;
    ng_ext_after_fork_child(interp, survivor);
}
