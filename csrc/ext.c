/* Extension hooks: components outside the thread-state layer (the page allocator) that keep
 * data per thread state and per interpreter learn here when a state or an interpreter goes
 * away and when a fork child must adopt dead threads' data. */
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

void ng_ext_after_fork_child(ng_interp *interp, ng_tstate *survivor)
{
    /* Only this thread exists: a registration cut short by fork left the lock held. */
    ng_mutex_at_fork_reinit(&ext_lock);
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
