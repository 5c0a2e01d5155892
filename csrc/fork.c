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
