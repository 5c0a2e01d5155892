/* fork() hooks of the C core, registered once when the library is loaded.
 *
 * The parking lot must forget the waiters of threads that do not exist in the child before
 * anything in the child touches a lock; running the reset as a pthread_atfork child handler
 * guarantees it runs first in every child created with fork(3). (Go's os/exec does not call
 * fork(3) and does not need it.) The unlock mode (nogil/park_announce.h) is decided here too,
 * at load time, before any lock can be used. Locks themselves live in user memory, so re-initialising the
 * ones the child uses stays the caller's job (ng_*_at_fork_reinit).
 *
 * The thread-state layer's own structures (interpreters, thread states, QSBR slots, delayed
 * queues) are the library's, so it prepares them itself: before the fork it stops every
 * interpreter's world and takes their locks; the parent releases them; the child resets them
 * and drops the states of threads that do not exist there (interp.c tells the details).
 *
 * Lock order of the prepare handler, process-wide:
 *  1. the list of interpreters (interp.c's all_interps_lock);
 *  2. every interpreter's stop-the-world (stw.mutex, then the stop);
 *  3. every interpreter's QSBR mutex;
 *  4. per interpreter, its delayed-queue mutex, then its head_lock;
 *  5. the quarantine pools (interpreters, then thread states);
 *  6. the extension lock and the extensions' own locks (their before_fork).
 * 1 to 3 are try-locks, taken all or none: when one fails the handler undoes them, pauses
 * with its state detached and starts again. It may not wait for any of them while it holds
 * the others: a thread that holds a world stopped goes on to take the list's lock
 * (ng_interp_new, ng_interp_delete) or a QSBR mutex (ng_tstate_new, ng_tstate_release) and
 * would wait for the handler, which waited for that world; and a mutex handed to a thread
 * that slept in it detached stays held while a stop suspends that thread in its re-attach.
 * 4 to 6 are waited for: their holders never wait for a stop or get suspended while holding
 * them (no detaching wait, no checkpoint inside), so the stops cannot make them wait for us.
 *
 * A world the forking thread holds stopped itself is left stopped (it restarts it later), so
 * a thread suspended by that stop stays suspended through every attempt. Such a thread never
 * keeps the list's lock (interp.c's lock_list lets it go before it re-attaches). A QSBR mutex
 * or another world's stw.mutex it may hold, handed over while it slept; but it has not used
 * it yet and cannot before the restart (ng_lock_detach marks the state with the lock until
 * it is attached), so the handler counts such a lock as taken: it leaves it to that thread,
 * stops that other world without its mutex, and in the parent neither unlocks it nor, at the
 * restart, the stw.mutex. The child re-initialises both. A suspended thread may also hold
 * another world stopped (it stopped it, then was suspended at a checkpoint or in a wait):
 * that stop is complete and cannot end before ours, so the handler takes the world as
 * stopped; the parent leaves it to its holder, and the child resets it as one of its own.
 * Not recognised, so the handler still retries while they last: such a holder that waits
 * in ng_gil_take (GIL enabled, the forking thread holding the GIL) rather than parked on its
 * state word, and a suspended holder in an interpreter already taken off the list by its
 * deletion.
 *
 * Extensions (ng_ext_hooks in nogil/tstate.h: the page allocator) hear about the fork here
 * too, at the points that header documents: their before_fork after the stops (their locks
 * may be waited for by attached threads, which the stops park first), their parent hooks
 * before the worlds restart, and their child resets before the layer clears the dead
 * threads' states (whose tstate_clear takes those locks again).
 */
#include <pthread.h>

#include "internal.h"
#include "tstate_internal.h"

static void prepare_fork(void)
{
    ng_tstate_layer_before_fork();
    ng_ext_before_fork();
}

static void parent_after_fork(void)
{
    ng_ext_after_fork_parent();
    ng_tstate_layer_after_fork_parent();
}

static void child_after_fork(void)
{
    ng_parking_lot_after_fork();
    /* The child is a new address space: register it for membarrier (or fall back to CAS
     * unlocks while it still has a single thread, before anyone can depend on the mode). */
    ng_park_announce_init();
    /* After the parking lot forgot the dead waiters: these re-initialise locks, the
     * extensions' first because the layer's reset calls their tstate_clear. */
    ng_ext_after_fork_child_reset();
    ng_tstate_layer_after_fork_child();
}

__attribute__((constructor)) static void init_core(void)
{
    ng_park_announce_init();
    pthread_atfork(prepare_fork, parent_after_fork, child_after_fork);
}
