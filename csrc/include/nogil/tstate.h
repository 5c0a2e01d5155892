/* Interpreters and thread states (CPython's PyInterpreterState / PyThreadState of the
 * free-threaded build), stop-the-world and the GIL switchable at run time.
 *
 * A thread state is bound to the OS thread that created it; every call that acts as "the
 * current thread" checks this and returns NG_EWRONGTHREAD otherwise. It is reference counted:
 * one reference for the interpreter's list, one for the OS thread; whoever drops the last one
 * frees it. Released states are parked in a quarantine pool with a dead magic, so a stale
 * pointer gets NG_ERELEASED rather than undefined behaviour (as long as the pool has not
 * handed the memory out again; Go callers get a guaranteed error from the wrapper).
 *
 * States (each in its own word, spec R4): DETACHED (not touching shared objects; QSBR offline),
 * ATTACHED (may touch them; holds the GIL when it is enabled), SUSPENDED (stopped by a
 * stop-the-world; only the requester moves it back), SHUTTING_DOWN (interpreter deleted while
 * the thread was blocked: the thread can only release its state).
 *
 * Blocking waits of the lock family (NG_WAIT_DETACH) detach the calling thread's attached
 * state while they sleep and re-attach afterwards (ng_set_block_hooks is installed on first
 * use of this layer).
 *
 * Thread exit: a pthread key destructor releases every state still bound to the exiting thread
 * (detaching it, abandoning its delayed frees to the interpreter, releasing the GIL before
 * leaving QSBR: spec R1). Fork: a child handler keeps the forking thread's states and drops
 * every other thread's (their queues go to the interpreter queue, their QSBR slots are freed);
 * the prepare handler stops the world of every interpreter so no queue is mid-update.
 */
#ifndef NOGIL_TSTATE_H
#define NOGIL_TSTATE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "delayed_free.h"
#include "event.h"
#include "mutex.h"
#include "qsbr.h"
#include "thread_id.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ng_tstate_state {
    NG_TSTATE_DETACHED = 0,
    NG_TSTATE_ATTACHED = 1,
    NG_TSTATE_SUSPENDED = 2,
    NG_TSTATE_SHUTTING_DOWN = 3,
};

/* Bits of the pending-work word (CPython's eval breaker; same bit numbers where they exist). */
enum ng_pending_bits {
    NG_PENDING_GIL_DROP = 1u << 0,    /* a GIL waiter asks the holder to yield */
    NG_PENDING_CALLS = 1u << 2,       /* reserved for pending calls */
    NG_PENDING_STOP = 1u << 5,        /* stop-the-world requested: suspend at the checkpoint */
    NG_PENDING_MERGE = 1u << 6,       /* reserved for refcount merges (object model issue) */
    NG_PENDING_DELAYED = 1u << 7,     /* process delayed frees (mirrors should_process) */
};

#define NG_TSTATE_MAGIC UINT32_C(0x6e677473)      /* "ngts" */
#define NG_TSTATE_DEAD_MAGIC UINT32_C(0xdeadd7a7)

/* Extensions (see ng_ext_register below) a process can register. */
#define NG_EXT_MAX 4

typedef struct ng_interp ng_interp;

typedef struct ng_tstate {
    /* Words other threads write, each on its own (R4). */
    uint32_t state;            /* ng_tstate_state; parked on while SUSPENDED */
    uint32_t holds_gil;        /* written by the owner only, read by others */
    uintptr_t pending;         /* ng_pending_bits; atomic OR/AND */
    /* Owner-side data. */
    uint32_t magic;
    uint32_t cleared;          /* 1 once its work was handed to the interpreter */
    ng_qsbr_slot *qsbr;        /* NULL until registered (spec R7) */
    ng_interp *interp;
    struct ng_tstate *prev, *next;         /* interpreter list, under head_lock */
    struct ng_tstate *thread_next;         /* the OS thread's bound states (TLS list) */
    intptr_t refcount;         /* 2 at creation: the list and the OS thread */
    uint64_t id;               /* unique per interpreter, from 1 */
    uint64_t thread_id;        /* ng_thread_id() of the bound OS thread */
    pid_t native_tid;
    ng_delayed_queue delayed;  /* owner-only (others: under stop-the-world) */
    void *user;                /* free for the embedder (the Go wrapper) */
    void *ext[NG_EXT_MAX];     /* per-state data of registered extensions */
} ng_tstate;

typedef struct ng_stw {
    ng_mutex mutex;            /* serialises stop-the-world attempts (held while stopped) */
    uint32_t requested;        /* under head_lock */
    uint32_t world_stopped;    /* read relaxed by anyone */
    intptr_t countdown;        /* under head_lock */
    ng_tstate *requester;      /* under head_lock; NULL allowed */
    ng_event stop_event;
} ng_stw;

typedef struct ng_gil {
    int32_t enabled;           /* 0 off, 1..INT32_MAX-1 transient count, INT32_MAX permanent */
    ng_mutex lock;
    ng_tstate *holder;         /* relaxed; who took it last */
    uint64_t switches;         /* hand-overs (stats) */
    int64_t interval_ns;       /* a waiter asks the holder to yield after this long (5 ms) */
} ng_gil;

typedef void ng_object_free_fn(void *obj);

typedef struct ng_interp_stats {
    uint64_t threads;              /* thread states in the list */
    uint64_t delayed_items;        /* all queues, including the interpreter's */
    uint64_t delayed_bytes;
    uint64_t interp_queue_items;
    uint64_t stops;                /* completed stop-the-world pauses */
    int32_t gil_enabled;
    ng_qsbr_stats qsbr;
    int64_t oldest_pending_age_ns; /* age of the oldest queued entry, 0 if none */
} ng_interp_stats;

struct ng_interp {
    uint32_t magic;
    ng_mutex head_lock;        /* thread list and stop-the-world bookkeeping; never detaches */
    ng_tstate *threads;        /* newest first */
    uint64_t next_id;
    uint64_t nthreads;
    ng_qsbr_shared qsbr;
    ng_delayed_interp_queue delayed;
    ng_stw stw;
    ng_gil gil;
    ng_object_free_fn *object_free;
    uint64_t stops;
    struct ng_interp *all_next;     /* process-wide list of interpreters (fork handlers) */
    void *ext[NG_EXT_MAX];          /* per-interpreter data of registered extensions */
};

/* ---- Interpreter ------------------------------------------------------------------------ */

/* Creates an interpreter. NG_OK or NG_ENOMEM. */
int ng_interp_new(ng_interp **out);
/* Deletes an interpreter. Every thread state must have been released, except states of
 * threads blocked in the library, which are moved to SHUTTING_DOWN. Runs the remaining delayed
 * work. NG_OK, NG_EBUSY (a thread state of the calling thread still exists, or the calling
 * thread has stopped its world), NG_ERELEASED (already deleted), NG_EINVAL. */
int ng_interp_delete(ng_interp *interp);
/* Sets the release function of NG_DELAYED_OBJECT entries (default: free). */
void ng_interp_set_object_free(ng_interp *interp, ng_object_free_fn *fn);
void ng_interp_get_stats(ng_interp *interp, ng_interp_stats *out);

/* ---- Thread state ----------------------------------------------------------------------- */

/* Creates a thread state for the calling OS thread, DETACHED (SUSPENDED if a stop-the-world is
 * in progress). NG_OK, NG_ENOMEM (nothing leaked: R18), NG_ERELEASED (the interpreter is
 * deleted or being deleted), NG_EINVAL. */
int ng_tstate_new(ng_interp *interp, ng_tstate **out);
/* Releases the calling thread's state: detaches if attached, hands its delayed work to the
 * interpreter, unlinks it, releases the GIL, unregisters QSBR, drops both references. A state
 * of another interpreter attached on the thread is detached for the hand-over (which may
 * wait for a stop-the-world of ts's interpreter to end) and attached again after it.
 * NG_OK, NG_EWRONGTHREAD, NG_ERELEASED, NG_EINVAL. */
int ng_tstate_release(ng_tstate *ts);

/* The calling thread's attached state, or NULL. */
ng_tstate *ng_tstate_current(void);

/* DETACHED -> ATTACHED (waits while SUSPENDED; takes the GIL when enabled; QSBR online).
 * NG_OK, NG_ESTATE (already attached, or another state of this thread is attached),
 * NG_EWRONGTHREAD, NG_ERELEASED, NG_CANCELLED (SHUTTING_DOWN: release the state), NG_ENOMEM
 * (only in the child of fork(), when the state could not get a new QSBR slot). */
int ng_tstate_attach(ng_tstate *ts);
/* ATTACHED -> DETACHED (QSBR offline first, then the state, then the GIL). NG_OK, NG_ESTATE,
 * NG_EWRONGTHREAD, NG_ERELEASED. */
int ng_tstate_detach(ng_tstate *ts);

/* The checkpoint (eval breaker): reports a quiescent state, then handles pending work (stop
 * requests, GIL drop requests, delayed frees). Cheap when nothing is pending. With a delayed-free
 * cap set (ng_delayed_set_cap) and the thread's queue over it, it waits detached for the queue's
 * grace period (delayed_free.h). NG_OK, a misuse status, or after that wait the status of
 * attaching again (the interpreter may have been deleted meanwhile). */
int ng_tstate_checkpoint_slow(ng_tstate *ts);
static inline int ng_tstate_checkpoint(ng_tstate *ts)
{
    /* The owner check comes first: another thread's report would mark the owner quiescent
     * while it may still hold pointers (and race with the owner's own writes of its seq). */
    if (ts != NULL && ts->magic == NG_TSTATE_MAGIC &&
        ng_atomic_load(&ts->thread_id, NG_RELAXED) == ng_thread_id() && ts->qsbr != NULL &&
        ng_atomic_load(&ts->state, NG_RELAXED) == NG_TSTATE_ATTACHED) {
        ng_qsbr_quiescent_state(ts->qsbr);
        if (ng_atomic_load(&ts->pending, NG_RELAXED) == 0)
            return NG_OK;
    }
    return ng_tstate_checkpoint_slow(ts);
}

/* Sets / clears pending bits on any thread state (atomic OR / AND). */
void ng_tstate_set_pending(ng_tstate *ts, uintptr_t bits);
void ng_tstate_clear_pending(ng_tstate *ts, uintptr_t bits);

/* ---- Stop-the-world -------------------------------------------------------------------- */

/* Stops every other thread state of the interpreter: detached ones are moved to SUSPENDED,
 * attached ones suspend at their next checkpoint. `ts` is the caller's state (attached or
 * detached) or NULL for a thread without one (a thread with an attached state in `interp`
 * must pass that one). The requester waits without detaching (R8).
 * While stopped, the requester must not lock mutexes other threads contend (R9).
 * A thread that holds a world stopped may fork(): the world stays stopped in the parent and
 * the child, and the caller restarts it in each. Threads that this stop suspended keep what
 * they hold (a lock handed to them while they slept, another interpreter's world they hold
 * stopped) until that restart; the fork takes such things over instead of waiting for them.
 * NG_OK, NG_EWRONGTHREAD, NG_EBUSY (the calling thread already stopped this world),
 * NG_ERELEASED, NG_EINVAL. */
int ng_stop_the_world(ng_interp *interp, ng_tstate *ts);
/* Restarts the threads stopped by ng_stop_the_world. NG_OK, NG_EINVAL (not stopped). */
int ng_start_the_world(ng_interp *interp);
static inline bool ng_world_stopped(const ng_interp *interp)
{
    return ng_atomic_load(&interp->stw.world_stopped, NG_RELAXED) != 0;
}

/* ---- GIL (off by default) -------------------------------------------------------------- */

/* Counts one "needs the GIL" request; the first one stops the world and turns it on. The
 * caller's state `ts` must be attached (it holds the GIL on return). NG_OK, NG_ESTATE (not
 * attached), NG_EBUSY (INT32_MAX - 1 requests), NG_CANCELLED (the interpreter was deleted
 * meanwhile), or another misuse status. */
int ng_gil_enable(ng_tstate *ts);
/* Drops one request; the last one turns the GIL off and releases it. The caller must hold it
 * (else NG_ESTATE; also NG_ESTATE when it is permanent). */
int ng_gil_disable(ng_tstate *ts);
/* Permanently on (like PYTHON_GIL=1). */
int ng_gil_enable_permanent(ng_tstate *ts);
static inline bool ng_gil_enabled(const ng_interp *interp)
{
    return ng_atomic_load(&interp->gil.enabled, NG_RELAXED) != 0;
}

/* ---- Extensions ------------------------------------------------------------------------ */

/* A component that keeps data per thread state and per interpreter (the page allocator of
 * mimalloc_shim/) registers hooks once and gets an index i: ts->ext[i] and interp->ext[i] are
 * its own (NULL at creation). The hooks answer the two questions every structure must: what
 * happens when the owning thread goes away, and what happens around fork(). Every hook may be
 * NULL.
 *
 * fork(3), in the order the library's pthread_atfork handlers (csrc/fork.c) run them, with
 * n extensions registered as 0..n-1:
 *
 *   prepare  the thread-state layer stops every interpreter's world (one the forking thread
 *            stopped itself stays stopped) and takes its own locks (the interpreter list, the
 *            QSBR, delayed-queue and head locks, the pools; a QSBR or stop mutex, or a
 *            stopped world, that a thread kept suspended by those stops holds is left to
 *            it) and the registration lock; then
 *            before_fork 0, 1, ..., n-1.
 *   parent   after_fork_parent n-1, ..., 1, 0; then the layer releases its locks and restarts
 *            the worlds it stopped.
 *   child    the parking lot forgets the dead threads' waiters; after_fork_child_reset
 *            n-1, ..., 1, 0; then the layer resets its structures and, interpreter by
 *            interpreter, calls tstate_clear (0, ..., n-1) for each state of a thread that
 *            did not survive, then after_fork_child 0, 1, ..., n-1.
 *
 * The three process-wide fork hooks (before_fork, after_fork_parent, after_fork_child_reset)
 * run on the forking thread while every attached thread is suspended or detached, with the
 * locks above held, so they:
 *  - may take the extension's own locks whose holders never suspend, never wait for a lock of
 *    the thread-state layer and never wait for an attached thread (ng_raw_mutex critical
 *    sections): stateless and detached threads still run and leave such sections; a lock
 *    whose holder can be suspended by a stop would deadlock the fork;
 *  - must not allocate from the library's heaps (ng_mi_*: the page allocator's own
 *    before_fork holds its locks from its turn until the parent or child hook, and they are
 *    not recursive), nor create, attach, detach or release thread states, stop a world, take
 *    a lock of the thread-state layer, or register an extension (all of these wait for locks
 *    the forking thread holds); the C library's malloc is fine;
 *  - cannot fail: an extension that cannot prepare must leave its child able to cope.
 * Whatever before_fork takes, after_fork_parent gives back; in the child the forking thread
 * is the only thread and the holder of all of it, and after_fork_child_reset re-initialises
 * it (ng_*_at_fork_reinit for ng_mutex and friends, a fresh initialiser for raw mutexes)
 * before anything of the child needs it: tstate_clear of the dead threads' states comes
 * after. after_fork_child_reset must not look at interpreters or thread states (the layer has
 * not reset them yet); after_fork_child may, and may allocate. */
typedef struct ng_ext_hooks {
    /* A thread state goes away; called for every state whose ts->ext[i] is not NULL, exactly
     * once, and must leave it NULL:
     *  - on the state's own thread, from ng_tstate_release or the thread-exit destructor, after
     *    the delayed-free hand-over; ts->qsbr is still registered (online when possible);
     *  - in the child of fork(), on the surviving thread, for states of threads that did not
     *    survive; ts->qsbr is NULL there (their slots were recycled).
     * Not called for states claimed by ng_interp_delete while their thread was blocked:
     * interp_free below sees their data. */
    void (*tstate_clear)(ng_tstate *ts, int index);
    /* Child of fork(), once per interpreter, after the dead threads' states were cleared.
     * `survivor` is the forking thread's state in `interp` (its attached one, else any), or
     * NULL when it has none there. The extension's locks were re-initialised already
     * (after_fork_child_reset). */
    void (*after_fork_child)(ng_interp *interp, ng_tstate *survivor, int index);
    /* The interpreter's last reference is gone (every state was freed): release
     * interp->ext[i] and whatever the claimed states' ext[i] still held. */
    void (*interp_free)(ng_interp *interp, int index);
    /* fork(3), process-wide (see the order above): take what the child must not inherit half
     * updated (locks of critical sections that threads without an attached state may be in). */
    void (*before_fork)(int index);
    /* Parent of fork(): give back what before_fork took. */
    void (*after_fork_parent)(int index);
    /* Child of fork(), before any state is cleared: re-initialise what before_fork took. */
    void (*after_fork_child_reset)(int index);
} ng_ext_hooks;

/* Registers `hooks` (kept by pointer: static storage). Returns the index (>= 0), NG_EBUSY when
 * NG_EXT_MAX extensions exist, NG_EINVAL for NULL. Registering the same hooks twice returns
 * the first index. */
int ng_ext_register(const ng_ext_hooks *hooks);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_TSTATE_H */
