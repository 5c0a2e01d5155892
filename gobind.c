// C side of the Go wrappers of interpreters and thread states; see gobind.h.
#include <pthread.h>
#include <stdlib.h>

#include "gobind.h"
#include "tstate_internal.h"

/* ---- Bindings ---------------------------------------------------------------------------- */

/* The value of bindings_key is the calling thread's list of bindings; its destructor marks
 * them NG_GO_THREAD_EXITED when the thread exits (a goroutine returned while locked to it).
 * The core's own destructor releases the thread states themselves.
 *
 * The key is created when the library is loaded, before any thread state exists. glibc runs
 * key destructors in creation order, so this one normally runs before the core's (created on
 * first use) and the wrapper sees "exited" before the state's memory is recycled. The Go
 * wrapper does not depend on that order for correctness: until the mark, only the exited
 * goroutine could pass its same-goroutine check. */
static pthread_key_t bindings_key;
static int bindings_key_ok;

static void binding_unref(ng_go_binding *b)
{
    if (ng_atomic_fetch_sub(&b->refs, 1, NG_ACQ_REL) == 1)
        free(b);
}

void ng_go_unpin(ng_go_binding *b)
{
    /* Exchanged, so the pin goes once whoever drops it (Release or the collection). Acq-rel:
     * the unpin of one follows whatever the other did with the slot before. */
    ng_qsbr_slot *slot = ng_atomic_exchange(&b->slot, NULL, NG_ACQ_REL);
    if (slot != NULL)
        ng_tstate_unpin_slot(slot);
}

void ng_go_binding_collected(ng_go_binding *b)
{
    /* No reader is left: the wrapper and every QuiescentReporter copy (which holds the
     * wrapper) are unreachable. The slot may still be the live state's (a wrapper collected
     * without Release): then the pin just goes, and its release frees the slot. */
    ng_go_unpin(b);
    binding_unref(b);
}

static void bindings_exit(void *head)
{
    ng_go_binding *next;
    for (ng_go_binding *b = head; b != NULL; b = next) {
        next = b->next;
        /* Seq-cst: the Go side reads it with sync/atomic. */
        ng_atomic_store(&b->dead, NG_GO_THREAD_EXITED, NG_SEQ_CST);
        binding_unref(b);
    }
}

__attribute__((constructor)) static void bindings_key_init(void)
{
    bindings_key_ok = pthread_key_create(&bindings_key, bindings_exit) == 0;
}

ng_go_binding *ng_go_bind(ng_interp *interp, int *status)
{
    if (!bindings_key_ok) {
        *status = NG_ENOMEM;
        return NULL;
    }
    ng_go_binding *b = calloc(1, sizeof *b);
    if (b == NULL) {
        *status = NG_ENOMEM;
        return NULL;
    }
    ng_tstate *ts;
    int st = ng_tstate_new(interp, &ts);
    if (st != NG_OK) {
        free(b);
        *status = st;
        return NULL;
    }
    st = ng_tstate_pin_slot(ts, &b->slot);
    if (st != NG_OK) {
        ng_tstate_release(ts);
        free(b);
        *status = st;
        return NULL;
    }
    b->ts = ts;
    b->refs = 2;
    b->next = pthread_getspecific(bindings_key);
    if (pthread_setspecific(bindings_key, b) != 0) {
        ng_tstate_release(ts);
        ng_tstate_unpin_slot(b->slot);
        free(b);
        *status = NG_ENOMEM;
        return NULL;
    }
    ts->user = b;
    *status = NG_OK;
    return b;
}

int ng_go_release(ng_go_binding *b)
{
    int st = ng_tstate_release(b->ts);
    if (st != NG_OK)
        return st;
    ng_atomic_store(&b->dead, NG_GO_RELEASED, NG_SEQ_CST);
    /* Unlink from this thread's list; the list is only touched by its own thread. */
    ng_go_binding *head = pthread_getspecific(bindings_key);
    if (head == b) {
        pthread_setspecific(bindings_key, b->next);
    } else {
        for (ng_go_binding *p = head; p != NULL; p = p->next) {
            if (p->next == b) {
                p->next = b->next;
                break;
            }
        }
    }
    binding_unref(b);
    return NG_OK;
}

/* ---- Queue to the Go runner ---------------------------------------------------------------- */

ng_go_box *ng_go_box_new(void)
{
    return calloc(1, sizeof(ng_go_box));
}

void ng_go_box_free(ng_go_box *b)
{
    free(b);
}

void ng_go_box_release(ng_go_box *b)
{
    if (!ng_atomic_load(&b->keep, NG_SEQ_CST))
        free(b);
}

static void box_wake(ng_go_box *b)
{
    /* Seq-cst after the change the runner must see: a runner that read the old gen either
     * finds the change when it empties the queue or is parked by the time we unpark. */
    ng_atomic_fetch_add(&b->gen, 1, NG_SEQ_CST);
    ng_unpark_all(&b->gen);
}

static void box_push(ng_go_box *b, ng_go_item *it)
{
    ng_go_item *old = ng_atomic_load(&b->head, NG_RELAXED);
    do {
        it->next = old;
        /* Release: the runner that takes the item sees its contents. */
    } while (!ng_atomic_cas(&b->head, &old, it, NG_RELEASE, NG_RELAXED));
    box_wake(b);
}

/* The ng_delayed_fn of NG_GO_CALL items: the grace period is over, hand it to Go. */
static void go_call_ready(void *arg)
{
    ng_go_item *it = arg;
    box_push(it->box, it);
}

int ng_go_call_delayed(ng_tstate *ts, ng_go_box *b, uintptr_t handle, size_t size)
{
    ng_go_item *it = calloc(1, sizeof *it);
    if (it == NULL)
        return NG_ENOMEM;
    it->box = b;
    it->kind = NG_GO_CALL;
    it->handle = handle;
    /* Counted before it can be pushed (and freed), so the count never goes below zero. */
    ng_atomic_fetch_add(&b->outstanding, 1, NG_SEQ_CST);
    int st = ng_call_delayed(ts, go_call_ready, it, size);
    if (st != NG_OK) {
        ng_atomic_fetch_sub(&b->outstanding, 1, NG_SEQ_CST);
        free(it);
    }
    return st;
}

int ng_go_take(ng_go_box *b, uint64_t done_kick, uint64_t *kick_out, ng_go_item **list_out)
{
    for (;;) {
        uint32_t gen = ng_atomic_load(&b->gen, NG_SEQ_CST);
        uint64_t kick = ng_atomic_load(&b->kick, NG_SEQ_CST);
        /* Read before the exchange: an item counted as outstanding here is either taken by
         * the exchange or pushed later, which bumps gen and ends the park below. */
        uint64_t outstanding = ng_atomic_load(&b->outstanding, NG_SEQ_CST);
        ng_go_item *list = ng_atomic_exchange(&b->head, NULL, NG_ACQ_REL);
        *kick_out = kick;
        if (list != NULL) {
            /* The stack is newest first; run in the order the grace periods ended. */
            ng_go_item *fifo = NULL;
            while (list != NULL) {
                ng_go_item *next = list->next;
                list->next = fifo;
                fifo = list;
                list = next;
            }
            *list_out = fifo;
            return 0;
        }
        *list_out = NULL;
        if (kick != done_kick)
            return 0;
        if (ng_atomic_load(&b->stop, NG_SEQ_CST) && outstanding == 0)
            return 1;
        ng_park(&b->gen, &gen, sizeof gen, -1, NULL, NG_WAIT_DEFAULT);
    }
}

void ng_go_items_free(ng_go_box *b, ng_go_item *list)
{
    while (list != NULL) {
        ng_go_item *next = list->next;
        if (list->kind == NG_GO_CALL)
            ng_atomic_fetch_sub(&b->outstanding, 1, NG_SEQ_CST);
        free(list);
        list = next;
    }
}

uint64_t ng_go_kick(ng_go_box *b)
{
    uint64_t k = ng_atomic_fetch_add(&b->kick, 1, NG_SEQ_CST) + 1;
    box_wake(b);
    return k;
}

void ng_go_stop(ng_go_box *b)
{
    ng_atomic_store(&b->stop, 1, NG_SEQ_CST);
    box_wake(b);
}

/* The stall callback: runs on the polling thread, which may be a C thread or be inside the
 * core's processing, so it only copies the report for the runner. A report that cannot be
 * allocated is dropped (Stats still counts it). */
static void go_stall(void *arg, const ng_qsbr_stall *stall)
{
    ng_go_box *b = arg;
    ng_go_item *it = calloc(1, sizeof *it);
    if (it == NULL)
        return;
    it->box = b;
    it->kind = NG_GO_STALL;
    it->stall = *stall;
    box_push(b, it);
}

void ng_go_set_stall_handler(ng_interp *interp, ng_go_box *b, int64_t threshold_ns)
{
    if (threshold_ns > 0) {
        ng_atomic_store(&b->keep, 1, NG_SEQ_CST);
        ng_qsbr_set_stall_handler(&interp->qsbr, threshold_ns, go_stall, b);
    }
    else {
        ng_qsbr_set_stall_handler(&interp->qsbr, 0, NULL, NULL);
    }
}
