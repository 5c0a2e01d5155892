/* fork() hooks of the C core, registered once when the library is loaded.
 *
 * The parking lot must forget the waiters of threads that do not exist in the child before
 * anything in the child touches a lock; running the reset as a pthread_atfork child handler
 * guarantees it runs first in every child created with fork(3). (Go's os/exec does not call
 * fork(3) and does not need it.) The unlock mode (nogil/park_announce.h) is decided here too,
 * at load time, before any lock can be used. Locks themselves live in user memory, so re-initialising the
 * ones the child uses stays the caller's job (ng_*_at_fork_reinit).
 */
#include <pthread.h>

#include "internal.h"

static void child_after_fork(void)
{
    ng_parking_lot_after_fork();
    /* The child is a new address space: register it for membarrier (or fall back to CAS
     * unlocks while it still has a single thread, before anyone can depend on the mode). */
    ng_park_announce_init();
}

__attribute__((constructor)) static void init_core(void)
{
    ng_park_announce_init();
    pthread_atfork(NULL, NULL, child_after_fork);
}
