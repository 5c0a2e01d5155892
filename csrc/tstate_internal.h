/* Private part of the thread-state layer (interp.c, tstate.c, stw.c, gil.c), shared with the
 * rest of the core (delayed_free.c) and the C tests. Not part of the public API.
 *
 * Both public structs are allocated inside a larger private one (ng_tstate_impl,
 * ng_interp_impl) whose extra fields the public header does not need to show: the
 * bookkeeping that decides who tears a state down when its release races with the deletion
 * of its interpreter, the interpreter's reference count, and the quarantine links.
 */
#ifndef NOGIL_TSTATE_INTERNAL_H
#define NOGIL_TSTATE_INTERNAL_H

#include <stddef.h>

#include "internal.h"

#define NG_INTERP_MAGIC UINT32_C(0x6e67696e)      /* "ngin" */
#define NG_INTERP_DEAD_MAGIC UINT32_C(0xdeadd1e7)

/* ---- Quarantine pools ------------------------------------------------------------------- */

/* Released states and interpreters are never given back to malloc: they keep their dead magic
 * in a FIFO pool, reachable from a global (so LeakSanitizer does not report them), and are
 * reused only once `keep` newer ones are queued behind them. A stale pointer therefore reads
 * the dead magic for a long while instead of someone else's live object. */
typedef struct ng_pool_link {
    struct ng_pool_link *next;
} ng_pool_link;

typedef struct ng_pool {
    ng_mutex lock; /* leaf lock, never held while blocking on anything else */
    ng_pool_link *head, *tail;
    size_t count;
    size_t keep;
} ng_pool;

/* Under AddressSanitizer the quarantined memory is poisoned, except the words a stale
 * pointer may legitimately touch (the magic; a thread state's state/pending words), so any
 * other use of a released state or deleted interpreter is reported. */
#if defined(__SANITIZE_ADDRESS__)
#define NG_QUARANTINE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NG_QUARANTINE_ASAN 1
#endif
#endif
#ifdef NG_QUARANTINE_ASAN
#include <sanitizer/asan_interface.h>
#define NG_QUARANTINE_POISON(addr, size) ASAN_POISON_MEMORY_REGION((addr), (size))
#define NG_QUARANTINE_UNPOISON(addr, size) ASAN_UNPOISON_MEMORY_REGION((addr), (size))
#else
#define NG_QUARANTINE_POISON(addr, size) ((void)(addr), (void)(size))
#define NG_QUARANTINE_UNPOISON(addr, size) ((void)(addr), (void)(size))
#endif

/* Takes the oldest entry if more than `keep` are queued, else NULL. */
ng_pool_link *ng_pool_take(ng_pool *pool);
void ng_pool_put(ng_pool *pool, ng_pool_link *link);

/* ---- Private structs ---------------------------------------------------------------------- */

typedef struct ng_tstate_impl {
    ng_tstate pub; /* first: a public pointer is a pointer to this struct */
    /* Under the interpreter's head_lock: the state is in the interpreter's list. Whoever
     * clears it (the owner's release, or the interpreter's deletion) drops the list's
     * reference. */
    uint32_t linked;
    /* Under head_lock: the owner's release has taken over the delayed-free queue, so a
     * concurrent interpreter deletion must not abandon it as well. */
    uint32_t releasing;
    struct ng_tstate_impl *claimed_next; /* ng_interp_delete's private list */
    /* The lock that ng_lock_detach got for the owner while the state was detached, from the
     * moment it is held until the owner is attached again (NULL otherwise). Written by the
     * owner, read by the fork prepare handler: when the state is SUSPENDED by a stop that
     * the forking thread holds, the owner can neither use nor release that lock before the
     * restart, so the handler may count it as its own (interp.c). */
    ng_mutex *locked_unattached;
    ng_pool_link pool_link;
} ng_tstate_impl;

typedef struct ng_interp_impl {
    ng_interp pub; /* first */
    /* One reference for the creator (dropped by ng_interp_delete) and one per thread state
     * whose memory is not yet in the quarantine pool: a state can outlive the deletion of its
     * interpreter (its thread was blocked), and its release still locks head_lock and
     * unregisters its QSBR slot. The last reference runs the leftover delayed work, frees the
     * QSBR segments and quarantines the memory. */
    intptr_t refs;
    /* References to the memory alone: one while `refs` is not zero, and one per QSBR slot
     * pinned through ng_tstate_pin_slot, whose reader may load the write sequence and the
     * slot's seq after the teardown. The last one frees the QSBR segments and quarantines
     * the memory; the teardown that `refs` runs (late delayed work, extensions) does not wait
     * for it. */
    intptr_t mem_refs;
    uint32_t deleting; /* under head_lock: ng_tstate_new refuses new states */
    /* ng_thread_id() of the thread that holds stw.mutex (0: none); relaxed, only compared
     * with the caller's own id (a thread always sees its own writes). */
    uint64_t stw_owner;
    uint32_t fork_stopped; /* the fork prepare handler stopped this world (forking thread) */
    /* NG_FORK_BORROWED_* bits: locks (or the stop) of this interpreter that the fork
     * prepare handler did not take because a thread its stops keep suspended holds them
     * (see locked_unattached, interp.c); the parent handler must not unlock or restart
     * them. Forking thread only. */
    uint32_t fork_borrowed;
    ng_pool_link pool_link;
} ng_interp_impl;

#define NG_FORK_BORROWED_STW 1u  /* stw.mutex: the handler stopped the world without it */
#define NG_FORK_BORROWED_QSBR 2u /* qsbr.mutex */
#define NG_FORK_BORROWED_STOP 4u /* the whole stop: its holder is suspended in a world of ours */

#define NG_TSTATE_IMPL(ts) ((ng_tstate_impl *)(ts))
#define NG_INTERP_IMPL(in) ((ng_interp_impl *)(in))
#define NG_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* ---- Validation --------------------------------------------------------------------------- */

/* Validates `ts` as a state the calling thread may act on: NG_EINVAL (NULL), NG_ERELEASED
 * (released: its magic is not the live one), NG_EWRONGTHREAD (bound to another OS thread),
 * else NG_OK. */
int ng_tstate_check_owner(ng_tstate *ts);

/* Validates `ts` as a live state (any thread): NG_EINVAL (NULL), NG_ERELEASED, else NG_OK. */
int ng_tstate_check_live(ng_tstate *ts);

/* NG_EINVAL (NULL), NG_ERELEASED (deleted), else NG_OK. */
int ng_interp_check_live(ng_interp *interp);

/* ---- Internal operations (no validation: the caller has checked) -------------------------- */

/* The attach loop of ng_tstate_attach (GIL, wait while SUSPENDED, QSBR online); `ts` is the
 * caller's, not attached. NG_OK, NG_CANCELLED (SHUTTING_DOWN) or NG_ENOMEM (no QSBR slot). */
int ng_tstate_attach_unchecked(ng_tstate *ts);
/* QSBR offline, then the new state word (DETACHED or SUSPENDED), then the GIL. */
void ng_tstate_detach_to(ng_tstate *ts, uint32_t new_state);
/* Drops `n` references; the last one quarantines the memory. */
void ng_tstate_decref(ng_tstate *ts, intptr_t n);
/* Whether the calling thread has a bound, unreleased state in `interp`. */
bool ng_tstate_thread_has_state_in(ng_interp *interp);
/* Unlinks `ts` from its interpreter's list (under head_lock) and keeps a stop-the-world in
 * progress consistent (spec 5.5 "Interaction with deletion"). */
void ng_tstate_unlink_locked(ng_tstate *ts);

/* Stop-the-world without argument checks (interpreter deletion, fork, GIL enable).
 * NG_OK or NG_EBUSY (the calling thread already stopped this world). */
int ng_stw_stop(ng_interp *interp, ng_tstate *requester);
/* ng_stw_stop that does not wait for stw.mutex: NG_TIMEOUT (nothing done) when another
 * thread holds it, i.e. stops this world or holds it stopped (the fork handler). */
int ng_stw_try_stop(ng_interp *interp, ng_tstate *requester);
/* The fork handler's stop of a world whose stw.mutex a suspended thread holds unused (its
 * state's locked_unattached): the stop proceeds without the mutex, which stays that
 * thread's; ng_stw_start_borrowed ends it and leaves the mutex locked. */
void ng_stw_stop_borrowed(ng_interp *interp, ng_tstate *requester);
void ng_stw_start_borrowed(ng_interp *interp);
/* NG_OK or NG_EINVAL (not stopped). */
int ng_stw_start(ng_interp *interp);
/* Whether the calling thread is the one that stopped this interpreter's world. */
bool ng_stw_stopped_by_me(ng_interp *interp);
/* Honours a stop request at a checkpoint: suspends the attached caller and waits for the
 * restart. NG_OK or NG_CANCELLED. */
int ng_stw_suspend_self(ng_tstate *ts);

/* Takes the GIL if it is enabled (waiting without detaching); returns whether it did. */
bool ng_gil_take(ng_tstate *ts);
/* Releases the GIL held by `ts`. */
void ng_gil_drop(ng_tstate *ts);
/* Forgets `ts` as the last GIL holder (its memory is about to be quarantined). */
void ng_gil_forget_holder(ng_tstate *ts);

void ng_interp_ref(ng_interp *interp);
void ng_interp_unref(ng_interp *interp);
/* A reference to the interpreter's memory only (see mem_refs); the caller holds a reference of
 * either kind. */
void ng_interp_ref_memory(ng_interp *interp);
void ng_interp_unref_memory(ng_interp *interp);

/* Pins the QSBR slot of the live state `ts` for a reader that compares its seq with the
 * interpreter's write sequence at any time, without knowing whether the state is still there
 * (the Go wrapper's inlined quiescent report): a slot the state gives back is retained, offline
 * (ng_qsbr_pin), and the interpreter's memory, which holds the write sequence and the slot
 * segments, stays, until ng_tstate_unpin_slot. So the two words stay readable and equal only
 * while the state is live, attached and up to date. The caller keeps `ts` live during the
 * call. NG_OK, NG_EINVAL, NG_ESTATE (no slot: a fork child's state not yet re-registered). */
int ng_tstate_pin_slot(ng_tstate *ts, ng_qsbr_slot **slot_out);
/* Drops the pin; the last pin of a given-back slot frees it, the last reference of a deleted
 * interpreter quarantines its memory. Any thread, holding no QSBR mutex. */
void ng_tstate_unpin_slot(ng_qsbr_slot *slot);

/* fork() handlers of the layer, called from fork.c's pthread_atfork handlers (the child one
 * after the parking lot was reset). */
void ng_tstate_layer_before_fork(void);
void ng_tstate_layer_after_fork_parent(void);
void ng_tstate_layer_after_fork_child(void);
/* Installs the block hooks that detach a thread while it sleeps in a lock (once). */
void ng_tstate_layer_install_hooks(void);
/* The thread-state quarantine pool's lock, for the fork handlers. */
void ng_tstate_layer_lock_pool(void);
void ng_tstate_layer_unlock_pool(void);
void ng_tstate_layer_reinit_pool(void);
/* Child of fork(), per interpreter: drops every state not bound to the forking thread. */
void ng_tstate_after_fork_child(ng_interp *interp);

/* ext.c: run the registered extensions' hooks (see ng_ext_hooks in nogil/tstate.h). */
void ng_ext_clear_tstate(ng_tstate *ts);
void ng_ext_after_fork_child(ng_interp *interp, ng_tstate *survivor);
/* fork.c's pthread_atfork handlers: the process-wide fork hooks, in the documented order. */
void ng_ext_before_fork(void);
void ng_ext_after_fork_parent(void);
void ng_ext_after_fork_child_reset(void);
void ng_ext_interp_free(ng_interp *interp);
/* Child of fork(): resets the stop-the-world and GIL bookkeeping of `interp`. */
void ng_stw_after_fork_child(ng_interp *interp);
void ng_gil_after_fork_child(ng_interp *interp, ng_tstate *survivor);

/* ---- Locks taken without detaching -------------------------------------------------------- */

/* Locks `m` without calling the block hooks and without honouring the caller's cancellation
 * token: for the layer's own short critical sections (head_lock, pools), which must neither
 * detach the caller (head_lock is taken by stop-the-world itself) nor give up. */
static inline void ng_lock_nodetach(ng_mutex *m)
{
    if (ng_mutex_trylock(m))
        return;
    ng_cancel *token = ng_cancel_install(NULL);
    while (ng_mutex_lock_timed(m, -1, NG_WAIT_DEFAULT) != NG_OK) {
    }
    ng_cancel_install(token);
}

/* Locks `m`, detaching the caller's attached state while it waits (so that a stop-the-world
 * can suspend it), without honouring the cancellation token: for locks whose holder may wait
 * for a stop-the-world (QSBR mutexes, stw.mutex).
 *
 * The detach is done here rather than by the block hooks, so that the caller can say that it
 * holds `m` before it attaches again: a stop may suspend the detached state meanwhile, and
 * the thread then waits in the attach for the restart with `m` held (an unlocker hands a
 * mutex straight to a waiter that waited long). The holder of that stop cannot get `m` until
 * it restarts the world; its fork prepare handler therefore looks at locked_unattached and
 * counts `m` as its own (interp.c), instead of waiting for it for ever. */
static inline void ng_lock_detach(ng_mutex *m)
{
    if (ng_mutex_trylock(m))
        return;
    ng_tstate *ts = ng_tstate_current();
    if (ts != NULL)
        ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    ng_lock_nodetach(m);
    if (ts == NULL)
        return;
    ng_tstate_impl *impl = NG_TSTATE_IMPL(ts);
    /* Release: pairs with the fork handler's acquire load, so that what the earlier holders
     * of `m` did (ordered before our lock) is visible to the handler that takes `m` over. */
    ng_atomic_store(&impl->locked_unattached, m, NG_RELEASE);
    /* Fails only if the interpreter is being deleted: carry on detached, as the block hooks
     * do; the next attach reports it. */
    (void)ng_tstate_attach_unchecked(ts);
    /* Relaxed: the handler reads this word only for a state it found SUSPENDED (acquire),
     * and a suspension that comes after this point is published by a release store of the
     * state word that follows this store in our order (our own detach_to, which the
     * stopper's acquire-release CAS reads, or suspend_self's), so it sees NULL. */
    ng_atomic_store(&impl->locked_unattached, NULL, NG_RELAXED);
}

/* ---- Test hooks --------------------------------------------------------------------------- */

/* While positive, each allocation of a thread state's memory decrements it and fails
 * (ng_tstate_new returns NG_ENOMEM after its QSBR slot was reserved: spec R18). */
extern int ng_test_fail_tstate_alloc;

/* Called by ng_tstate_new after the state is linked into the interpreter's list and before
 * its QSBR slot is registered (spec R7). NULL by default. */
extern void (*ng_test_tstate_linked_hook)(ng_tstate *ts);

/* Called by the attach loop between its GIL take and its state CAS (the window of spec 5.3
 * step e). NULL by default. */
extern void (*ng_test_attach_window_hook)(ng_tstate *ts);

/* Called by ng_interp_delete once its stop-the-world completed, before the remaining states
 * are moved to SHUTTING_DOWN (spec R3). NULL by default. */
extern void (*ng_test_interp_delete_stopped_hook)(ng_interp *interp);

/* Called by the fork handler before it restarts each world it stopped (in the parent, or
 * after a failed attempt). NULL by default. */
extern void (*ng_test_fork_restart_hook)(ng_interp *interp);

/* The lock of the process-wide list of interpreters, for tests that hold it. */
ng_mutex *ng_test_interp_list_lock(void);

/* Counters for the tests (relaxed): thread states and interpreters quarantined, and frees of
 * a state that was not live (a double free; the second one is ignored). */
extern uint64_t ng_test_tstate_frees;
extern uint64_t ng_test_tstate_bad_frees;
extern uint64_t ng_test_interp_frees;

/* ---- Torture knob ------------------------------------------------------------------------- */

#ifdef NOGIL_TORTURE
/* Yields about one time in four at race-prone points of the layer. */
void ng_tstate_torture_yield(void);
#define NG_TSTATE_TORTURE_YIELD() ng_tstate_torture_yield()
#else
#define NG_TSTATE_TORTURE_YIELD() ((void)0)
#endif

#endif /* NOGIL_TSTATE_INTERNAL_H */
