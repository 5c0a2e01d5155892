/* Heap sets and the thread-state/interpreter life cycle: lazy creation, the extension hooks
 * (state cleared, fork, interpreter freed), the per-interpreter data.
 *
 * fork(3): threads without a state, or detached, may be inside a critical section of an
 * interpreter's `lock` or of the segment registry's at the moment of the fork, halfway
 * through a list update; resetting the lock in the child left the child with that half-done
 * list. So the before_fork hook takes every such lock and the parent hook releases them; the
 * child's reset hook re-initialises them (their holder is the forking thread, the child's
 * only one) before the thread-state layer clears the dead threads' states, whose abandon
 * takes them again. The extension layer calls before_fork after the thread-state layer has
 * stopped every world: an attached thread waiting for one of these locks never reaches the
 * checkpoint that stops it, so taking them before the stops could deadlock; after them, the
 * wait is only for critical sections that never suspend (ng_ext_hooks documents the order). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "alloc_internal.h"
#include "tstate_internal.h"

static void hook_tstate_clear(ng_tstate *ts, int index);
static void hook_after_fork_child(ng_interp *interp, ng_tstate *survivor, int index);
static void hook_interp_free(ng_interp *interp, int index);
static void hook_before_fork(int index);
static void hook_after_fork_parent(int index);
static void hook_after_fork_child_reset(int index);

static const ng_ext_hooks hooks = {
    .tstate_clear = hook_tstate_clear,
    .after_fork_child = hook_after_fork_child,
    .interp_free = hook_interp_free,
    .before_fork = hook_before_fork,
    .after_fork_parent = hook_after_fork_parent,
    .after_fork_child_reset = hook_after_fork_child_reset,
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* Every ng_mi_interp (proc_next), for the fork hooks. Lock order: proc_lock, then an
 * interpreter's lock, then the registry's. */
static ng_raw_mutex proc_lock;
static ng_mi_interp *proc_all;

static void hook_before_fork(int index)
{
    ng_raw_mutex_lock(&proc_lock);
    for (ng_mi_interp *mi = proc_all; mi != NULL; mi = mi->proc_next)
        ng_mi_interp_lock(mi);
    ng_mi_registry_lock_for_fork();
}

static void hook_after_fork_parent(int index)
{
    ng_mi_registry_unlock();
    for (ng_mi_interp *mi = proc_all; mi != NULL; mi = mi->proc_next)
        ng_mi_interp_unlock(mi);
    ng_raw_mutex_unlock(&proc_lock);
}

static void hook_after_fork_child_reset(int index)
{
    /* The forking thread holds them all; it is the only thread here. */
    ng_mi_registry_after_fork();
    for (ng_mi_interp *mi = proc_all; mi != NULL; mi = mi->proc_next)
        mi->lock = (ng_raw_mutex)NG_RAW_MUTEX_INIT;
    proc_lock = (ng_raw_mutex)NG_RAW_MUTEX_INIT;
}

static int ext_index = -1;

static void init(void)
{
    ng_mi_size_init();
    ext_index = ng_ext_register(&hooks);
}

int ng_mi_ext_index(void)
{
    pthread_once(&init_once, init);
    return ext_index;
}

void ng_mi_interp_lock(ng_mi_interp *mi) { ng_raw_mutex_lock(&mi->lock); }
void ng_mi_interp_unlock(ng_mi_interp *mi) { ng_raw_mutex_unlock(&mi->lock); }

ng_mi_interp *ng_mi_interp_of(ng_interp *interp)
{
    int idx = ng_mi_ext_index();
    if (idx < 0)
        return NULL;
    /* Acquire: pairs with the release of the CAS that published it. */
    return ng_atomic_load(&interp->ext[idx], NG_ACQUIRE);
}

/* The interpreter's data, created by the first thread that needs it. */
static ng_mi_interp *interp_data(ng_interp *interp, int idx)
{
    ng_mi_interp *mi = ng_atomic_load(&interp->ext[idx], NG_ACQUIRE); /* see above */
    if (mi != NULL)
        return mi;
    ng_mi_interp *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL)
        return NULL;
    fresh->interp = interp;
    void *expected = NULL;
    /* Published and listed under proc_lock together: a fork in between would have taken no
     * lock of data another thread could already be updating under it. Acq-rel: release
     * publishes the initialised struct; acquire (on failure too) makes the winner's visible
     * to us. */
    ng_raw_mutex_lock(&proc_lock);
    bool won = ng_atomic_cas(&interp->ext[idx], &expected, fresh, NG_ACQ_REL, NG_ACQUIRE);
    if (won) {
        fresh->proc_next = proc_all;
        if (proc_all != NULL)
            proc_all->proc_prev = fresh;
        proc_all = fresh;
    }
    ng_raw_mutex_unlock(&proc_lock);
    if (won)
        return fresh;
    free(fresh);
    return expected;
}

bool ng_mi_may_access(ng_mi_thread *t)
{
    if (t->thread_id == ng_thread_id())
        return true;
    ng_interp *interp = t->mi->interp;
    return ng_world_stopped(interp) && ng_stw_stopped_by_me(interp);
}

int ng_mi_heap_of(ng_tstate *ts, ng_mi_heap_kind kind, ng_mi_heap **out)
{
    if (ts == NULL || out == NULL || (unsigned)kind >= NG_MI_HEAP_COUNT)
        return NG_EINVAL;
    if (ts->magic != NG_TSTATE_MAGIC)
        return NG_ERELEASED;
    if (ng_atomic_load(&ts->thread_id, NG_RELAXED) != ng_thread_id())
        return NG_EWRONGTHREAD;
    /* Relaxed: written on this thread (the release path, after the clear hook). */
    if (ng_atomic_load(&ts->cleared, NG_RELAXED))
        return NG_ERELEASED;
    int idx = ng_mi_ext_index();
    if (idx < 0)
        return NG_ENOMEM;
    ng_mi_thread *t = ts->ext[idx];
    if (t == NULL) {
        ng_mi_interp *mi = interp_data(ts->interp, idx);
        if (mi == NULL)
            return NG_ENOMEM;
        t = calloc(1, sizeof *t);
        if (t == NULL)
            return NG_ENOMEM;
        t->tstate = ts;
        t->mi = mi;
        t->thread_id = ng_thread_id();
        for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
            ng_mi_heap *h = &t->heaps[k];
            for (size_t w = 0; w <= NG_MI_DIRECT_WSIZE; w++)
                h->direct[w] = &ng_mi_empty_page;
            h->thread_id = t->thread_id;
            h->thread = t;
            h->tstate = ts;
            h->kind = (uint8_t)k;
            h->use_qsbr = k != NG_MI_HEAP_MEM;
            h->prefix = ng_mi_kind_prefix(k);
            t->data[k].retired_min = 1;
            t->data[k].retired_max = 0;
        }
        ng_mi_interp_lock(mi);
        t->next = mi->threads;
        if (mi->threads != NULL)
            mi->threads->prev = t;
        mi->threads = t;
        ng_mi_interp_unlock(mi);
        ts->ext[idx] = t;
    }
    *out = &t->heaps[kind];
    return NG_OK;
}

static void hook_tstate_clear(ng_tstate *ts, int index)
{
    ng_mi_thread *t = ts->ext[index];
    if (t == NULL)
        return;
    /* A state cleared on another thread is a fork child's dead thread (the hook contract). */
    bool fork_child = t->thread_id != ng_thread_id();
    ng_mi_thread_abandon(t, fork_child);
    ts->ext[index] = NULL;
}

static void hook_after_fork_child(ng_interp *interp, ng_tstate *survivor, int index)
{
    ng_mi_interp *mi = interp->ext[index];
    if (mi == NULL)
        return;
    /* The locks were re-initialised by hook_after_fork_child_reset, before the clears. */
    /* A freer that died between USE -> FREEING and FREEING -> NORMAL left the state behind:
     * nobody would ever end it, and the survivor's own pages would wait for it forever. Its
     * block is either on the heap's delayed list already or lost (a leak, not a fault). */
    uint64_t me = ng_thread_id();
    for (ng_mi_thread *t = mi->threads; t != NULL; t = t->next) {
        if (t->thread_id != me)
            continue;
        for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
            for (ng_mi_segment *s = t->data[k].segments; s != NULL; s = s->next)
                for (uint32_t i = 0; i < s->page_count; i++) {
                    ng_mi_page *page = &s->pages[i];
                    /* Relaxed: the child has one thread. */
                    if (page->in_use && (ng_atomic_load(&page->thread_free, NG_RELAXED) &
                                         NG_MI_DELAY_MASK) == NG_MI_DELAY_FREEING)
                        ng_mi_page_set_delayed(page, NG_MI_DELAY_NORMAL, true);
                }
    }
    if (survivor == NULL)
        return;
    ng_mi_heap *heap;
    if (ng_mi_heap_of(survivor, NG_MI_HEAP_MEM, &heap) != NG_OK)
        return;
    ng_mi_thread *t = heap->thread;
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++)
        ng_mi_reclaim(&t->heaps[k], SIZE_MAX, true);
}

static void hook_interp_free(ng_interp *interp, int index)
{
    ng_mi_interp *mi = interp->ext[index];
    if (mi == NULL)
        return;
    /* Heap sets of states the interpreter's deletion claimed: nobody uses them any more. */
    while (mi->threads != NULL) {
        ng_mi_thread *t = mi->threads;
        mi->threads = t->next;
        free(t);
    }
    while (mi->all != NULL)
        ng_mi_segment_unmap(mi, mi->all);
    ng_raw_mutex_lock(&proc_lock);
    if (mi->proc_prev != NULL)
        mi->proc_prev->proc_next = mi->proc_next;
    else
        proc_all = mi->proc_next;
    if (mi->proc_next != NULL)
        mi->proc_next->proc_prev = mi->proc_prev;
    ng_raw_mutex_unlock(&proc_lock);
    interp->ext[index] = NULL;
    free(mi);
}
