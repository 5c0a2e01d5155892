/* Extension hooks: components outside the thread-state layer (the page allocator) that keep
 * data per thread state and per interpreter learn here when a state or an interpreter goes
 * away, when a fork is coming and when a fork child must adopt dead threads' data. The order
 * of the fork hooks is documented at ng_ext_hooks (nogil/tstate.h); fork.c calls them. */
#include "internal.h"
#include "tstate_internal.h"

static ng_mutex ext_lock;
static const ng_ext_hooks *ext_hooks[NG_EXT_MAX];
/* Release-published count: readers that see n also see ext_hooks[0..n-1]. */
static int ext_count;

int ng_ext_register(const ng_ext_hooks *hooks)
{
    if (hooks == NULL)
        return NG_EINVAL;
    ng_lock_nodetach(&ext_lock);
    int n = ng_atomic_load(&ext_count, NG_RELAXED);
    int index = -1;
    for (int i = 0; i < n; i++)
        if (ext_hooks[i] == hooks)
            index = i;
    if (index < 0 && n < NG_EXT_MAX) {
        ext_hooks[n] = hooks;
        ng_atomic_store(&ext_count, n + 1, NG_RELEASE);
        index = n;
    }
    ng_mutex_unlock(&ext_lock);
    return index >= 0 ? index : NG_EBUSY;
}

void ng_ext_clear_tstate(ng_tstate *ts)
{
    int n = ng_atomic_load(&ext_count, NG_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (ts->ext[i] != NULL && ext_hooks[i]->tstate_clear != NULL)
            ext_hooks[i]->tstate_clear(ts, i);
}

/* The prepare handler holds ext_lock until the parent or child handler, so every extension
 * that heard before_fork hears its counterpart and no registration slips in between. */
void ng_ext_before_fork(void)
{
    ng_lock_nodetach(&ext_lock);
    /* Relaxed: written under ext_lock, which we hold. */
    int n = ng_atomic_load(&ext_count, NG_RELAXED);
    for (int i = 0; i < n; i++)
        if (ext_hooks[i]->before_fork != NULL)
            ext_hooks[i]->before_fork(i);
}

void ng_ext_after_fork_parent(void)
{
    int n = ng_atomic_load(&ext_count, NG_RELAXED); /* under ext_lock, as above */
    for (int i = n - 1; i >= 0; i--)
        if (ext_hooks[i]->after_fork_parent != NULL)
            ext_hooks[i]->after_fork_parent(i);
    ng_mutex_unlock(&ext_lock);
}

void ng_ext_after_fork_child_reset(void)
{
    /* Only this thread exists and it holds the lock (the prepare handler took it). */
    ng_mutex_at_fork_reinit(&ext_lock);
    int n = ng_atomic_load(&ext_count, NG_RELAXED); /* read under ext_lock, as above */
    for (int i = n - 1; i >= 0; i--)
        if (ext_hooks[i]->after_fork_child_reset != NULL)
            ext_hooks[i]->after_fork_child_reset(i);
}

void ng_ext_after_fork_child(ng_interp *interp, ng_tstate *survivor)
{
    int n = ng_atomic_load(&ext_count, NG_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (ext_hooks[i]->after_fork_child != NULL)
            ext_hooks[i]->after_fork_child(interp, survivor, i);
}

void ng_ext_interp_free(ng_interp *interp)
{
    int n = ng_atomic_load(&ext_count, NG_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (ext_hooks[i]->interp_free != NULL)
            ext_hooks[i]->interp_free(interp, i);
}
